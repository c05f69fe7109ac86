// Validate an AsyncAPI document (stdin) with the official parser, @asyncapi/parser: print
// every diagnostic as `severity path message`, exit 1 when any is an error (severity 0).
import { readFileSync } from "node:fs";
import { Parser } from "@asyncapi/parser";

const text = readFileSync(0, "utf8");
const { document, diagnostics } = await new Parser().parse(text);
const names = ["error", "warning", "info", "hint"];
for (const d of diagnostics) {
  console.log(`${names[d.severity] ?? d.severity} ${d.path.join(".")} ${d.message}`);
}
const errors = diagnostics.filter((d) => d.severity === 0);
if (errors.length > 0 || document === undefined) {
  process.exit(1);
}
console.log(`valid: AsyncAPI ${document.version()}, ${document.channels().length} channels`);
