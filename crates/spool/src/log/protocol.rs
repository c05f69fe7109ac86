//! The only words the committing side (the writer thread) and the forwarding side (the lanes)
//! share: the commands sent to the writer, and where the writer hands what it made durable.

use std::io;
use std::sync::Arc;

use super::index::Slot;
use crate::record::Entry;

/// A request to the writer thread.
pub enum Command {
    /// Append an encoded PUT frame (its seq is set by the writer); answer once durable.
    Put {
        entry: Box<Entry>,
        frame: Vec<u8>,
        reply: tokio::sync::oneshot::Sender<io::Result<u64>>,
    },
    /// A target sink is done with entry `seq`.
    Done { seq: u64, sink: String },
    /// Write what came before, sync, and end the thread.
    Stop,
}

/// Where the writer hands durable entries, in log order: the slot, with the entry itself when
/// it was just written (the dispatcher may keep it, or leave it to be read back).
pub trait Dispatch: Send + 'static {
    fn dispatch(&mut self, slot: &Slot, entry: Option<Arc<Entry>>);
}
