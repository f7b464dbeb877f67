//! # forkloop
//!
//! Node.js's `cluster` module and event loop, rebuilt in Rust on raw epoll/kqueue (mio),
//! with no async runtime. A primary process forks workers (this same program, re-executed),
//! shares listening sockets with them, routes messages and supervises them; every process
//! runs a Node-style [`EventLoop`].
//!
//! This program is a complete cluster: the primary forks two workers, each greets the
//! primary, the primary answers and then disconnects them all.
//!
//! ```
//! use forkloop::primary::Event;
//! use forkloop::{EventLoop, Side};
//!
//! fn main() -> forkloop::Result<()> {
//!     let mut lp = EventLoop::new()?;
//!     match forkloop::start(&mut lp)? {
//!         Side::Primary(p) => {
//!             p.on(|lp, p, ev| {
//!                 if let Event::Message { worker, data, .. } = ev {
//!                     println!("primary got {:?} from worker {worker}", String::from_utf8_lossy(data));
//!                     let _ = p.send(lp, *worker, b"welcome");
//!                 }
//!             });
//!             p.fork(&mut lp)?;
//!             p.fork(&mut lp)?;
//!             let answered = std::rc::Rc::new(std::cell::Cell::new(0));
//!             p.on(move |lp, p, ev| {
//!                 if let Event::Message { .. } = ev {
//!                     answered.set(answered.get() + 1);
//!                     if answered.get() == 2 {
//!                         p.disconnect(lp, |_, _| println!("all workers gone"));
//!                     }
//!                 }
//!             });
//!         }
//!         Side::Worker(w) => {
//!             w.send(&mut lp, format!("hello from worker {}", w.id()).as_bytes())?;
//!             w.on_message(&mut lp, |_, w, msg| {
//!                 println!("worker {} got {:?}", w.id(), String::from_utf8_lossy(&msg.data));
//!             });
//!         }
//!     }
//!     let code = lp.run()?;
//!     assert_eq!(code, 0);
//!     Ok(())
//! }
//! ```
//!
//! Underneath, the primary and each worker talk over one [`ipc::Channel`]: length-prefixed
//! binary frames over a Unix socketpair, carrying control messages, user messages and file
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
//! | [`ipc`] | the wire format, the framed channel, typed protocol messages |
//! | [`rt`] | the event loop: Node's phases, timers, immediates, nextTick, microtasks, futures, I/O registration, signals, cross-thread posting, blocking pool |
//! | [`net`] | loop-driven TCP and Unix listeners and streams (buffered writes, half-close), UDP sockets |
//! | [`cluster`] | roles (primary or worker) and the shared vocabulary: worker states, exit status |
//! | [`primary`] | the primary: fork, worker table and events, messaging, listeners and the balancer (rr / shared / reuseport), supervision, systemd |
//! | [`worker`] | the worker: messaging, disconnect protocol, cluster-aware listen, servers that drain, loop lag |
//! | `http` | (feature `http`) an HTTP/1.1 server on a worker's listener or a plain one: keep-alive, pipelining, streamed bodies, limits, timeouts, graceful leaving |
//!
//! ## Features
//!
//! | feature | default | what |
//! |---|---|---|
//! | `http` | yes | `forkloop::http` (with `httparse`) |
//! | `cli` | yes | the `forkloop` command (`run`, `ctl`; with `clap`); turns on `node` |
//! | `node` | with `cli` | Node.js's own cluster protocol (`ipc::node`): a primary that runs unmodified Node.js workers (with `serde_json`) |
//! | `serde` | no | typed user messages as JSON (`Worker::send_json`, `Message::json`, …) |

#![deny(missing_docs, missing_debug_implementations)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings))))]

pub mod cluster;
pub mod error;
mod hooks;
#[cfg(feature = "http")]
pub mod http;
pub mod ipc;
pub mod net;
pub mod primary;
pub mod rt;
// Platform glue (socketpairs, SCM_RIGHTS, socket options, spawning, rlimits, CPU time).
// Public only for this repository's own tests, examples and benchmarks, which measure and
// probe below the API; it is not part of the supported API and may change in any release.
#[doc(hidden)]
pub mod sys;
pub mod worker;

pub use cluster::{Role, Side, role, start, start_with, try_role};
pub use error::{Error, Result};
pub use rt::{EventLoop, LoopHandle, RunMode};

// The README's code blocks are compiled and run as doctests, so the README cannot drift from
// the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
