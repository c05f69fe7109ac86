//! Run what we ship: the image and every shipped pod spec start the relay exactly as a
//! container engine or Kubernetes would, and it serves a signed delivery.
//!
//! No container engine runs on these machines, so the image is approximated as closely as they
//! allow: the runtime stage's root file system is a Debian bookworm made by debootstrap with the
//! stage's own RUN lines run in it (`scripts/image-rootfs.sh`); the test applies the stage's
//! COPY, ENV, USER, WORKDIR, ENTRYPOINT and CMD from the `Dockerfile` as written, and runs the
//! binary with chroot in fresh mount and network namespaces (so it listens on the shipped port,
//! 8080, without colliding with anything), the root file system read-only and only the declared
//! volumes writable. A pod spec adds its `env` (values and `secretKeyRef`s from the example
//! Secret), `args`, user, volumes (ConfigMap and Secret contents as files, claims and emptyDirs
//! as empty directories) and, unless `enableServiceLinks: false`, the service-link variables
//! Kubernetes would inject for every Service in `deploy/kubernetes`.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use support::{fixtures, post_fixture, RelayProcess, SOURCE_PATH};
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const BIN: &str = env!("CARGO_BIN_EXE_cal-relay");

/// The delivery every container is sent (signed with the container's secret): the
/// BOOKING_CREATED fixture stamped now, as Cal.com stamps `createdAt`, since the shipped
/// configurations refuse envelopes older than their replay window.
fn delivery_file() -> PathBuf {
    static FILE: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let fixture =
            std::fs::read(root().join("tests/fixtures/deliveries/BOOKING_CREATED.body")).unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&fixture).unwrap();
        v["createdAt"] = humantime::format_rfc3339_millis(std::time::SystemTime::now())
            .to_string()
            .into();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("BOOKING_CREATED.body");
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        // Readable from inside the container's user too.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        (dir, path)
    })
    .1
    .clone()
}

/// The runtime stage of the `Dockerfile`, as the image runs it.
#[derive(Debug, Default)]
struct Image {
    env: Vec<(String, String)>,
    user: String,
    workdir: String,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    /// (source in the repository or the build stage, destination in the image).
    copies: Vec<(String, String, bool)>,
    healthcheck: Vec<String>,
    volumes: Vec<String>,
    port: u16,
}

fn json_array(text: &str) -> Vec<String> {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not a JSON array {text:?}: {e}"))
}

fn dockerfile() -> Image {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    // Join continuation lines, drop comments, keep the instructions after the last FROM.
    let mut lines: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        if !current.trim().is_empty() {
            lines.push(current.trim().to_owned());
        }
        current.clear();
    }
    let from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    let mut image = Image::default();
    for line in &lines[from + 1..] {
        let (instr, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        match instr {
            "ENV" => {
                for pair in rest.split_whitespace() {
                    let (k, v) = pair.split_once('=').expect("ENV K=V");
                    image.env.retain(|(name, _)| name != k);
                    image
                        .env
                        .push((k.to_owned(), v.trim_matches('"').to_owned()));
                }
            }
            "USER" => image.user = rest.to_owned(),
            "WORKDIR" => image.workdir = rest.to_owned(),
            "ENTRYPOINT" => image.entrypoint = json_array(rest),
            "CMD" => image.cmd = json_array(rest),
            "VOLUME" => image.volumes = json_array(rest),
            "EXPOSE" => image.port = rest.parse().unwrap(),
            "HEALTHCHECK" => {
                let (_, cmd) = rest.split_once("CMD ").expect("HEALTHCHECK ... CMD [...]");
                image.healthcheck = json_array(cmd);
            }
            "COPY" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let from_build = words.iter().any(|w| w.starts_with("--from="));
                let paths: Vec<&str> = words.into_iter().filter(|w| !w.starts_with("--")).collect();
                assert_eq!(paths.len(), 2, "COPY SRC DST: {line}");
                image
                    .copies
                    .push((paths[0].to_owned(), paths[1].to_owned(), from_build));
            }
            _ => {}
        }
    }
    assert!(!image.entrypoint.is_empty() && image.port > 0, "{image:?}");
    image
}

/// The image's root file system (built once per stage text, cached across runs).
fn rootfs() -> PathBuf {
    static ROOTFS: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut guard = ROOTFS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = guard.as_ref() {
        return p.clone();
    }
    let out = Command::new(root().join("scripts/image-rootfs.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "image-rootfs.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    *guard = Some(path.clone());
    path
}

struct Mount {
    src: PathBuf,
    dst: String,
    read_only: bool,
}

/// One container to run: what the engine or the kubelet would give the process.
struct Container {
    env: Vec<(String, String)>,
    argv: Vec<String>,
    user: String,
    workdir: String,
    mounts: Vec<Mount>,
    /// A tmpfs on /tmp (the writable layer of `docker run` without `--read-only`).
    tmp: bool,
    port: u16,
    /// Run in the container's network namespace until it succeeds.
    health: Vec<String>,
    secret: String,
}

#[derive(Debug)]
struct Outcome {
    healthy: bool,
    /// `cal-relay send`'s output: status and answer.
    send: String,
    stdout: String,
    stderr: String,
    /// Exit status after SIGTERM.
    exit: String,
}

fn nul_list(items: &[String]) -> Vec<u8> {
    items
        .iter()
        .flat_map(|s| s.bytes().chain(std::iter::once(0)))
        .collect()
}

const RUN_SCRIPT: &str = r#"
set -u
R=$1; O=$2
mapfile -d '' ENVV < "$O/env"; mapfile -d '' ARGV < "$O/argv"
mapfile -d '' HEALTH < "$O/health"; mapfile -d '' SEND < "$O/send"; mapfile -d '' M < "$O/mounts"
USERSPEC=$(cat "$O/user"); WORKDIR=$(cat "$O/workdir"); WAIT=$(cat "$O/wait")
ip link set lo up
for ((i=0; i<${#M[@]}; i+=3)); do
  d="$R${M[i+1]}"
  if [ -d "${M[i]}" ]; then mkdir -p "$d"; else mkdir -p "$(dirname "$d")"; [ -e "$d" ] || touch "$d"; fi
done
mkdir -p "$R/tmp"
mount --bind "$R" "$R" && mount -o remount,bind,ro "$R" || exit 90
mount -t proc proc "$R/proc" && mount --bind /dev "$R/dev" || exit 91
[ -f "$O/tmpfs" ] && { mount -t tmpfs -o mode=1777 tmpfs "$R/tmp" || exit 92; }
for ((i=0; i<${#M[@]}; i+=3)); do
  mount --bind "${M[i]}" "$R${M[i+1]}" || exit 93
  if [ "${M[i+2]}" = ro ]; then mount -o remount,bind,ro "$R${M[i+1]}" || exit 94; fi
done
chroot --userspec="$USERSPEC" "$R" /usr/bin/env -i -C "$WORKDIR" "${ENVV[@]}" "${ARGV[@]}" \
  >"$O/stdout" 2>"$O/stderr" </dev/null &
pid=$!
ok=0
for _ in $(seq 1 150); do
  if "${HEALTH[@]}" >"$O/health.out" 2>&1; then ok=1; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.2
done
echo "$ok" > "$O/healthy"
if [ "$ok" = 1 ]; then
  "${SEND[@]}" > "$O/send.out" 2>&1
  if [ -n "$WAIT" ]; then
    for _ in $(seq 1 100); do grep -q "$WAIT" "$O/stdout" && break; sleep 0.1; done
  fi
fi
kill -TERM "$pid" 2>/dev/null
wait "$pid"; echo "$?" > "$O/exit"
"#;

/// Start `c` in fresh namespaces, wait for its health check, send it the signed delivery, wait
/// until its stdout holds `wait_for` (if given), stop it with SIGTERM.
fn run(c: &Container, wait_for: Option<&str>) -> Outcome {
    let work = tempfile::tempdir().unwrap();
    let o = work.path();
    let url = format!("http://127.0.0.1:{}{SOURCE_PATH}", c.port);
    let send = [
        BIN.to_owned(),
        "send".into(),
        "--url".into(),
        url,
        "--secret".into(),
        c.secret.clone(),
        delivery_file().display().to_string(),
    ];
    let env: Vec<String> = c.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mounts: Vec<String> = c
        .mounts
        .iter()
        .flat_map(|m| {
            [
                m.src.display().to_string(),
                m.dst.clone(),
                if m.read_only { "ro" } else { "rw" }.to_owned(),
            ]
        })
        .collect();
    std::fs::write(o.join("env"), nul_list(&env)).unwrap();
    std::fs::write(o.join("argv"), nul_list(&c.argv)).unwrap();
    std::fs::write(o.join("health"), nul_list(&c.health)).unwrap();
    std::fs::write(o.join("send"), nul_list(&send)).unwrap();
    std::fs::write(o.join("mounts"), nul_list(&mounts)).unwrap();
    std::fs::write(o.join("user"), &c.user).unwrap();
    std::fs::write(o.join("workdir"), &c.workdir).unwrap();
    std::fs::write(o.join("wait"), wait_for.unwrap_or("")).unwrap();
    if c.tmp {
        std::fs::write(o.join("tmpfs"), "").unwrap();
    }
    std::fs::write(o.join("run.sh"), RUN_SCRIPT).unwrap();
    let status = Command::new("unshare")
        .args([
            "--mount",
            "--net",
            "--fork",
            "--propagation",
            "private",
            "bash",
        ])
        .arg(o.join("run.sh"))
        .arg(rootfs())
        .arg(o)
        .status()
        .expect("unshare (util-linux) runs the container");
    let read = |name: &str| std::fs::read_to_string(o.join(name)).unwrap_or_default();
    let outcome = Outcome {
        healthy: read("healthy").trim() == "1",
        send: read("send.out").trim().to_owned(),
        stdout: read("stdout"),
        stderr: read("stderr"),
        exit: read("exit").trim().to_owned(),
    };
    assert!(
        status.success(),
        "container setup failed ({status}): {outcome:?}"
    );
    outcome
}

/// The signed delivery was accepted (2xx) by a healthy relay that then stopped cleanly.
fn assert_served(what: &str, out: &Outcome) {
    assert!(out.healthy, "{what}: health check never passed: {out:#?}");
    let status: u16 = out
        .send
        .split(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(
        (200..300).contains(&status),
        "{what}: delivery not accepted: {out:#?}"
    );
    assert_eq!(out.exit, "0", "{what}: exit after SIGTERM: {out:#?}");
    assert!(
        !out.stderr.contains('\u{1b}'),
        "{what}: colour escapes in a log that is not a terminal"
    );
}

/// The image as `docker run -p 8080:8080 -e CAL_WEBHOOK_SECRETS=... cal-relay` starts it (the
/// command in the Dockerfile's header), with an anonymous volume for each VOLUME.
fn image_container(image: &Image, volume_root: &Path) -> Container {
    let mut mounts = Vec::new();
    for (src, dst, from_build) in &image.copies {
        let src = if *from_build {
            assert!(dst.ends_with("/cal-relay"), "unexpected COPY --from: {dst}");
            PathBuf::from(BIN)
        } else {
            root().join(src)
        };
        mounts.push(Mount {
            src,
            dst: dst.clone(),
            read_only: true,
        });
    }
    for (i, v) in image.volumes.iter().enumerate() {
        let dir = volume_root.join(format!("volume-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        chown(&dir, &image.user);
        mounts.push(Mount {
            src: dir,
            dst: v.clone(),
            read_only: false,
        });
    }
    let mut env = vec![(
        "PATH".to_owned(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
    )];
    env.extend(image.env.iter().cloned());
    env.push(("CAL_WEBHOOK_SECRETS".into(), "image-test-secret".into()));
    let rootfs = rootfs().display().to_string();
    let mut health = vec![
        "chroot".to_owned(),
        format!("--userspec={}", image.user),
        rootfs,
    ];
    health.extend(image.healthcheck.iter().cloned());
    Container {
        env,
        argv: image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
        user: image.user.clone(),
        workdir: image.workdir.clone(),
        mounts,
        tmp: true,
        port: image.port,
        health,
        secret: "image-test-secret".into(),
    }
}

fn chown(path: &Path, user: &str) {
    let status = Command::new("chown").arg(user).arg(path).status().unwrap();
    assert!(status.success());
}

#[test]
fn the_image_starts_as_shipped_and_serves() {
    let image = dockerfile();
    let volumes = tempfile::tempdir().unwrap();
    let c = image_container(&image, volumes.path());
    let id = support::sha256_hex(&std::fs::read(delivery_file()).unwrap());
    let out = run(&c, Some(&id));
    assert_served("image", &out);
    // The image's default sink writes deliveries to stdout as JSON lines.
    assert!(
        out.stdout.lines().any(|l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v.to_string().contains(&id))
        }),
        "image: the delivery never reached stdout: {out:#?}"
    );
}

/// Every YAML document of `deploy/kubernetes`.
fn manifests() -> Vec<Yaml> {
    let mut docs = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    for p in paths {
        let text = std::fs::read_to_string(&p).unwrap();
        docs.extend(YamlLoader::load_from_str(&text).unwrap());
    }
    docs
}

fn named<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

/// `data` of a ConfigMap or `stringData` of a Secret as files in `dir`.
fn write_items(dir: &Path, items: &Yaml) {
    std::fs::create_dir_all(dir).unwrap();
    for (k, v) in items.as_hash().into_iter().flatten() {
        std::fs::write(dir.join(k.as_str().unwrap()), v.as_str().unwrap()).unwrap();
    }
}

/// The variables the kubelet injects for `service` when service links are on.
fn service_links(service: &Yaml, ip: &str) -> Vec<(String, String)> {
    let name = service["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_ascii_uppercase()
        .replace('-', "_");
    let mut env = vec![(format!("{name}_SERVICE_HOST"), ip.to_owned())];
    for (i, port) in service["spec"]["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .enumerate()
    {
        let number = port["port"].as_i64().unwrap();
        let proto = port["protocol"].as_str().unwrap_or("TCP");
        let lower = proto.to_ascii_lowercase();
        if i == 0 {
            env.push((format!("{name}_SERVICE_PORT"), number.to_string()));
            env.push((format!("{name}_PORT"), format!("{lower}://{ip}:{number}")));
        }
        if let Some(pname) = port["name"].as_str() {
            let pname = pname.to_ascii_uppercase().replace('-', "_");
            env.push((format!("{name}_SERVICE_PORT_{pname}"), number.to_string()));
        }
        let prefix = format!("{name}_PORT_{number}_{proto}");
        env.push((prefix.clone(), format!("{lower}://{ip}:{number}")));
        env.push((format!("{prefix}_PROTO"), lower));
        env.push((format!("{prefix}_PORT"), number.to_string()));
        env.push((format!("{prefix}_ADDR"), ip.to_owned()));
    }
    env
}

/// The `cal-relay` container of workload `kind`/`name` in `file`, as the kubelet starts it.
fn pod_container(file: &str, kind: &str, name: &str, volume_root: &Path) -> Container {
    let image = dockerfile();
    let docs = manifests();
    let text = std::fs::read_to_string(root().join("deploy/kubernetes").join(file)).unwrap();
    let own = YamlLoader::load_from_str(&text).unwrap();
    let workload = named(&own, kind, name);
    let pod = &workload["spec"]["template"]["spec"];
    let container = pod["containers"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some("cal-relay"))
        .expect("a container named cal-relay");
    let secret = named(&docs, "Secret", "cal-relay");

    // Environment: the image's, service links (unless disabled), then the container's own.
    let mut env = vec![(
        "PATH".to_owned(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
    )];
    env.extend(image.env.iter().cloned());
    env.push(("HOSTNAME".into(), format!("{name}-0")));
    env.push(("KUBERNETES_SERVICE_HOST".into(), "10.96.0.1".into()));
    env.push(("KUBERNETES_SERVICE_PORT".into(), "443".into()));
    if pod["enableServiceLinks"].as_bool() != Some(false) {
        for (i, svc) in docs
            .iter()
            .filter(|d| d["kind"].as_str() == Some("Service"))
            .enumerate()
        {
            env.extend(service_links(svc, &format!("10.96.0.{}", 10 + i)));
        }
    }
    for e in container["env"].as_vec().into_iter().flatten() {
        let k = e["name"].as_str().unwrap().to_owned();
        let v = if let Some(v) = e["value"].as_str() {
            v.to_owned()
        } else {
            let r = &e["valueFrom"]["secretKeyRef"];
            assert_eq!(r["name"].as_str(), Some("cal-relay"), "{k}: unknown Secret");
            secret["stringData"][r["key"].as_str().unwrap()]
                .as_str()
                .unwrap_or_else(|| panic!("{k}: no such key in the example Secret"))
                .to_owned()
        };
        env.retain(|(name, _)| *name != k);
        env.push((k, v));
    }

    // User: the container's securityContext, else the pod's, else the image's USER.
    let sc = |key: &str| {
        container["securityContext"][key]
            .as_i64()
            .or_else(|| pod["securityContext"][key].as_i64())
    };
    let user = match (sc("runAsUser"), sc("runAsGroup")) {
        (Some(u), Some(g)) => format!("{u}:{g}"),
        (Some(u), None) => format!("{u}:{u}"),
        _ => image.user.clone(),
    };
    let fs_group = pod["securityContext"]["fsGroup"].as_i64();

    // Volumes by name: ConfigMap and Secret contents, or an empty directory.
    let mut volumes: BTreeMap<String, PathBuf> = BTreeMap::new();
    let claims = workload["spec"]["volumeClaimTemplates"]
        .as_vec()
        .into_iter()
        .flatten()
        .map(|c| (c["metadata"]["name"].as_str().unwrap(), None));
    let declared = pod["volumes"]
        .as_vec()
        .into_iter()
        .flatten()
        .map(|v| (v["name"].as_str().unwrap(), Some(v)));
    for (vname, v) in declared.chain(claims) {
        let dir = volume_root.join(vname);
        match v {
            Some(v) if !v["configMap"].is_badvalue() => {
                let cm = v["configMap"]["name"].as_str().unwrap();
                let cm = named(&docs, "ConfigMap", cm);
                write_items(&dir, &cm["data"]);
            }
            Some(v) if !v["secret"].is_badvalue() => {
                assert_eq!(v["secret"]["secretName"].as_str(), Some("cal-relay"));
                write_items(&dir, &secret["stringData"]);
            }
            Some(v) if !v["emptyDir"].is_badvalue() && fs_group.is_none() => {
                // The kubelet creates an emptyDir world-writable.
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
                    .unwrap();
            }
            _ => {
                std::fs::create_dir_all(&dir).unwrap();
                if let Some(g) = fs_group {
                    chown(&dir, &format!("root:{g}"));
                    std::fs::set_permissions(
                        &dir,
                        std::os::unix::fs::PermissionsExt::from_mode(0o2775),
                    )
                    .unwrap();
                }
            }
        }
        volumes.insert(vname.to_owned(), dir);
    }
    let mut mounts = vec![Mount {
        src: PathBuf::from(BIN),
        dst: "/usr/local/bin/cal-relay".into(),
        read_only: true,
    }];
    for m in container["volumeMounts"].as_vec().into_iter().flatten() {
        let vname = m["name"].as_str().unwrap();
        mounts.push(Mount {
            src: volumes
                .get(vname)
                .unwrap_or_else(|| panic!("volumeMount of undeclared volume {vname}"))
                .clone(),
            dst: m["mountPath"].as_str().unwrap().to_owned(),
            read_only: m["readOnly"].as_bool().unwrap_or(false),
        });
    }
    // The image's config file is replaced only by what the pod mounts over /etc/cal-relay.
    if !mounts.iter().any(|m| m.dst == "/etc/cal-relay") {
        for (src, dst, from_build) in &image.copies {
            if !from_build {
                mounts.push(Mount {
                    src: root().join(src),
                    dst: dst.clone(),
                    read_only: true,
                });
            }
        }
    }

    let strings = |y: &Yaml| -> Option<Vec<String>> {
        y.as_vec()
            .map(|v| v.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
    };
    let mut argv = strings(&container["command"]).unwrap_or_else(|| image.entrypoint.clone());
    argv.extend(strings(&container["args"]).unwrap_or_else(|| image.cmd.clone()));

    let port = container["ports"][0]["containerPort"].as_i64().unwrap() as u16;
    let probe = ["startupProbe", "livenessProbe"]
        .iter()
        .map(|p| &container[*p]["httpGet"]["path"])
        .find_map(|p| p.as_str())
        .expect("an httpGet startup or liveness probe");
    let webhook_secret = secret["stringData"]["webhook-secrets"]
        .as_str()
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_owned();
    Container {
        env,
        argv,
        user,
        workdir: image.workdir.clone(),
        mounts,
        tmp: container["securityContext"]["readOnlyRootFilesystem"].as_bool() != Some(true),
        port,
        health: vec![
            BIN.to_owned(),
            "probe".into(),
            "--url".into(),
            format!("http://127.0.0.1:{port}{probe}"),
        ],
        secret: webhook_secret,
    }
}

/// Bytes under `dir`, recursively.
fn bytes_under(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        total += if p.is_dir() {
            bytes_under(&p)
        } else {
            e.metadata().map(|m| m.len()).unwrap_or(0)
        };
    }
    total
}

/// The pod's relay serves; its brokers are not reachable here (no cluster DNS in the test's
/// network namespace), so a spooling relay keeps the delivery on its volume.
fn pod_serves(file: &str, kind: &str, name: &str, spool_volume: &str) {
    let volumes = tempfile::tempdir().unwrap();
    let c = pod_container(file, kind, name, volumes.path());
    let out = run(&c, None);
    assert_served(file, &out);
    let spooled = bytes_under(&volumes.path().join(spool_volume));
    let body = std::fs::metadata(delivery_file()).unwrap().len();
    assert!(
        spooled > body,
        "{file}: the delivery is not on the spool volume ({spooled} bytes): {out:#?}"
    );
}

#[test]
fn the_deployment_pod_starts_as_shipped_and_serves() {
    pod_serves("deployment.yaml", "Deployment", "cal-relay", "spool");
}

#[test]
fn the_statefulset_pod_starts_as_shipped_and_serves() {
    pod_serves("statefulset.yaml", "StatefulSet", "cal-relay", "spool");
}

#[test]
fn the_sidecar_pod_starts_as_shipped_and_serves() {
    pod_serves(
        "sidecar-example.yaml",
        "Deployment",
        "bookings-app",
        "relay-spool",
    );
}

/// What the kubelet injects into every pod of a namespace with a Service named `cal-relay`
/// when service links are on (the default).
fn kubernetes_service_env() -> Vec<(String, String)> {
    service_links(named(&manifests(), "Service", "cal-relay"), "10.96.0.10")
}

#[tokio::test]
async fn kubernetes_service_link_variables_are_ignored_with_a_warning() {
    let env = kubernetes_service_env();
    assert!(env.iter().any(|(k, _)| k == "CAL_RELAY_PORT"), "{env:?}");
    assert!(
        env.iter().any(|(k, _)| k == "CAL_RELAY_SERVICE_HOST"),
        "{env:?}"
    );

    let config =
        support::one_sink_config("local", "type = \"file\"\npath = \"{dir}/events.jsonl\"");
    let relay = RelayProcess::start_with_env(&config, &env).await;
    let f = fixtures()
        .into_iter()
        .find(|f| f.trigger() == Some("BOOKING_CREATED"))
        .unwrap();
    let (status, body) = post_fixture(relay.addr, &f).await;
    assert_eq!(status, 200, "{body}");
    let lines = support::read_lines(&relay.path("events.jsonl"));
    assert_eq!(lines.len(), 1);

    // check-config with the same environment passes, and its warning names the variables
    // without their values.
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&relay.config_path)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for (k, _) in &env {
        assert!(stderr.contains(k.as_str()), "{k} not named: {stderr}");
    }
    assert!(!stderr.contains("10.96.0.10"), "values printed: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one warning line: {stderr}");
}

#[test]
fn cal_relay_config_names_the_file_and_real_keys_still_apply() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let config = support::one_sink_config("local", "type = \"file\"\npath = \"-\"")
        .replace("{listen}", "127.0.0.1:0");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .env("CAL_RELAY_CONFIG", &path)
        .env("CAL_RELAY_SERVER__MAX_BODY_BYTES", "4096")
        .env("CAL_RELAY_DELIVERY__MODE", "spool")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("delivery: spool"), "{stdout}");
    assert!(out.stderr.is_empty(), "no warning expected: {out:?}");

    // A wrongly typed value from the environment is still an error naming the variable.
    let out = Command::new(BIN)
        .arg("check-config")
        .env("CAL_RELAY_CONFIG", &path)
        .env("CAL_RELAY_SERVER__MAX_BODY_BYTES", "big")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.max_body_bytes")
            && stderr.contains("CAL_RELAY_SERVER__MAX_BODY_BYTES"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_key_in_the_file_is_one_line_naming_key_file_and_allowed_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let config = support::one_sink_config("local", "type = \"file\"\npath = \"-\"")
        .replace("{listen}", "127.0.0.1:0")
        .replace("[server]\n", "[server]\nmax_body_byts = 10\n");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("server.max_body_byts"), "{stderr}");
    assert!(!stderr.contains("default."), "profile prefix: {stderr}");
    assert!(stderr.contains("bad.toml"), "{stderr}");
    assert!(stderr.contains("max_body_bytes"), "allowed keys: {stderr}");
}
