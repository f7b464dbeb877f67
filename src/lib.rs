//! # forkloop
//!
//! Node.js's `cluster` module and event loop, rebuilt in Rust on raw epoll/kqueue (mio),
//! with no async runtime.
//!
//! The primary and each worker talk over one [`ipc::Channel`]: length-prefixed binary
//! frames over a Unix socketpair, carrying control messages, user messages and file
//! descriptors. This example sends a typed message with a pipe's write end across a
//! channel pair and writes through the received descriptor:
//!
//! ```
//! use std::io::{Read, Write};
//! use forkloop::ipc::{Channel, ChannelConfig, Message, Recv};
//!
//! # fn main() -> std::io::Result<()> {
//! let (mut primary, mut worker) = Channel::pair(ChannelConfig::default())?;
//! let (mut pipe_r, pipe_w) = std::io::pipe()?;
//!
//! // The primary queues a user message with a descriptor, then flushes.
//! let fd = std::os::fd::OwnedFd::from(pipe_w);
//! primary.send_msg(&Message::User(b"hello".to_vec()), vec![fd.into()]).unwrap();
//! primary.flush()?;
//!
//! // The worker receives the frame together with its descriptor.
//! let Recv::Frame(frame) = worker.recv()? else { panic!("no frame") };
//! let (msg, fds) = frame.into_message().unwrap();
//! assert_eq!(msg, Message::User(b"hello".to_vec()));
//! std::fs::File::from(fds.into_iter().next().unwrap()).write_all(b"via the fd")?;
//!
//! let mut got = [0u8; 10];
//! pipe_r.read_exact(&mut got)?;
//! assert_eq!(&got, b"via the fd");
//! # Ok(())
//! # }
//! ```
//!
//! ## Layers
//!
//! | module | what |
//! |---|---|
//! | [`sys`] | platform glue: socketpair, `SCM_RIGHTS`, spawning with an inherited channel |
//! | [`ipc`] | the wire format, the framed channel, typed protocol messages |
//! | [`rt`] | the event loop: Node's phases, timers, immediates, nextTick, microtasks, futures, I/O registration, signals, cross-thread posting, blocking pool |
//! | [`net`] | loop-driven TCP and Unix listeners and streams (buffered writes, half-close), UDP sockets |

#![deny(missing_docs, missing_debug_implementations)]
#![doc(test(attr(deny(warnings))))]

pub mod cluster;
pub mod error;
pub mod ipc;
pub mod net;
pub mod primary;
pub mod rt;
pub mod sys;
pub mod worker;

pub use cluster::{Role, role, try_role};
pub use error::{Error, Result};
pub use rt::{EventLoop, LoopHandle, RunMode};
