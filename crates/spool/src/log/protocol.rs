//! The only words the committing side (the writer thread) and the forwarding side (the lanes)
//! share: the commands sent to the writer, the board the lanes mark entries done on, and where
//! the writer hands what it made durable.

use std::io;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

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
    /// Marks are waiting on the [`Dones`] board.
    Wake,
    /// Write what came before, sync, and end the thread.
    Stop,
}

/// Where the writer hands durable entries, in log order: the slot, with the entry itself when
/// it was just written (the dispatcher may keep it, or leave it to be read back).
pub trait Dispatch: Send + 'static {
    fn dispatch(&mut self, slot: &Slot, entry: Option<Arc<Entry>>);
}

/// Where the lanes mark entries done, without waking the writer for each mark: the first mark
/// on an empty board sends one [`Command::Wake`], and the writer takes the whole board with
/// the batch it writes next (so DONEs from many lanes share one wake and one write).
pub struct Dones {
    marks: Mutex<Vec<(u64, String)>>,
    commands: Sender<Command>,
}

impl Dones {
    pub fn new(commands: Sender<Command>) -> Dones {
        Dones {
            marks: Mutex::default(),
            commands,
        }
    }

    /// Sink `sink` is done with entry `seq`.
    pub fn mark(&self, seq: u64, sink: &str) {
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        let first = marks.is_empty();
        marks.push((seq, sink.to_owned()));
        drop(marks);
        if first {
            let _ = self.commands.send(Command::Wake);
        }
    }

    /// Every mark made since the last take, as commands.
    pub(super) fn take(&self) -> impl Iterator<Item = Command> {
        let marks = std::mem::take(&mut *self.marks.lock().unwrap_or_else(|p| p.into_inner()));
        marks
            .into_iter()
            .map(|(seq, sink)| Command::Done { seq, sink })
    }
}
