//! The IPC layer between the primary and its workers: one framed channel per worker over a
//! Unix socketpair, carrying control messages, user messages and descriptors.
//!
//! * [`frame`]: the wire format (header table there), pure encode/decode; the fuzz targets.
//! * [`buf`]: reassembly of received bytes into frames with their descriptors, and the
//!   coalescing send queue; I/O-free.
//! * [`channel`]: the non-blocking channel over a mio `UnixStream`.
//! * [`ledger`]: which descriptors the peer has not read, and reading them back from a
//!   duplicate of its end once it is gone (no acknowledgements needed).
//! * [`proto`]: typed messages ([`Message`]) to and from frames.
//! * `node` (feature `node`): Node.js's own protocol (JSON lines, `NODE_HANDLE`
//!   descriptors), spoken with unmodified Node.js workers.

pub mod buf;
pub mod channel;
pub mod frame;
pub mod ledger;
#[cfg(feature = "node")]
pub mod node;
pub mod proto;

pub use buf::{InFrame, RecvBuffer, SendFd, SendQueue};
pub use channel::{
    Channel, ChannelConfig, ChannelError, Flush, READ_BUDGET, Recv, SendError, SendErrorKind,
};
pub use frame::{Decoded, Frame, FrameError, Header, Kind, Limits, LimitsError};
pub use ledger::{FdLedger, UnreadFrame};
pub use proto::{
    Endpoint, FdRule, HttpReport, LISTEN_IPV6_ONLY, ListenMode, ListenRequest, Message, ProtoError,
};

impl Channel {
    /// Queues a typed message with its descriptors.
    ///
    /// # Errors
    ///
    /// As [`Channel::send_with_fds`]; [`SendErrorKind::Proto`] if the message kind does not
    /// allow that many descriptors.
    pub fn send_msg(&mut self, msg: &Message, fds: Vec<SendFd>) -> Result<(), SendError> {
        let kind = msg.kind();
        if !Message::fd_rule(kind).allows(fds.len()) {
            let err = ProtoError::WrongFdCount {
                kind,
                got: fds.len(),
            };
            return Err(SendError::new(SendErrorKind::Proto(err), fds));
        }
        let mut payload = Vec::new();
        msg.encode_payload(&mut payload);
        self.send_with_fds(kind, &payload, fds)
    }
}

/// A message, the descriptors that came with it, and how many of its descriptors were lost
/// ([`InFrame::lost_fds`]).
pub type MessageWithLoss = (Message, Vec<std::os::fd::OwnedFd>, usize);

impl InFrame<'_> {
    /// Decodes this frame as a typed [`Message`], returning it with the descriptors.
    ///
    /// # Errors
    ///
    /// The payload does not decode, or the descriptor count does not fit the kind. The
    /// count checked is the one the frame declared: a frame that lost descriptors to a
    /// full descriptor table ([`InFrame::lost_fds`]) decodes as sent, with fewer of them.
    pub fn into_message(self) -> Result<(Message, Vec<std::os::fd::OwnedFd>), ProtoError> {
        self.into_message_with_loss().map(|(m, fds, _)| (m, fds))
    }

    /// [`InFrame::into_message`], also returning [`InFrame::lost_fds`].
    ///
    /// # Errors
    ///
    /// As [`InFrame::into_message`].
    pub fn into_message_with_loss(self) -> Result<MessageWithLoss, ProtoError> {
        let msg = Message::decode(self.kind, self.payload, self.fds.len() + self.lost_fds)?;
        Ok((msg, self.fds, self.lost_fds))
    }
}
