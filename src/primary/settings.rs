//! Primary settings: the analogue of Node's `cluster.setupPrimary()` / `cluster.settings`.

use std::ffi::OsString;
use std::path::PathBuf;

/// How workers are spawned. Every field is optional: [`Settings::merge`] layers a call's
/// settings over the previous ones, and a default applies only to a field never set (as
/// Node's `setupPrimary` does).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Program to execute (default: the current executable).
    pub exec: Option<PathBuf>,
    /// Its arguments (default: this process's arguments, taken when settings are applied).
    pub args: Option<Vec<OsString>>,
    /// Environment overlay for every worker, on top of the primary's environment.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory (default: inherited).
    pub cwd: Option<PathBuf>,
    /// Pipe the workers' stdout and stderr to the primary, which writes them line by line
    /// with a `[worker N] ` prefix (default: false, output inherited).
    pub silent: Option<bool>,
    /// User id to run workers as.
    pub uid: Option<u32>,
    /// Group id to run workers as.
    pub gid: Option<u32>,
    /// The protocol the workers speak on their channel (default
    /// [`Protocol::Forkloop`]).
    pub protocol: Option<Protocol>,
    /// How forwarded output is written in `silent` mode (default [`Output::Prefix`]).
    pub output: Option<Output>,
}

/// How the primary writes a `silent` worker's output: whole lines, each tagged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Output {
    /// `[worker N] line`.
    #[default]
    Prefix,
    /// `[worker N pid P] line`.
    Tagged,
    /// One JSON object per line:
    /// `{"worker":N,"pid":P,"stream":"stdout","line":"…"}` (invalid UTF-8 replaced).
    Json,
}

/// The protocol a worker speaks with the primary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// forkloop's own framed protocol: workers use [`crate::worker`].
    #[default]
    Forkloop,
    /// Node.js's cluster protocol (JSON lines over `NODE_CHANNEL_FD`, `NODE_UNIQUE_ID`
    /// set): workers are unmodified Node.js programs using `cluster` (feature `node`).
    Node,
    /// No channel: any program. Each worker inherits the primary's listening sockets
    /// ([`Primary::pass_listeners`](super::Primary::pass_listeners)) from descriptor 3 on,
    /// with `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES` set (systemd's socket
    /// activation convention). It counts as listening once started, and is asked to
    /// leave with `SIGTERM`.
    Fds,
}

impl Settings {
    /// Layers `later` over `self`: fields set in `later` win; environment overlays are
    /// concatenated (later entries win when the same variable appears twice).
    pub fn merge(&mut self, later: Settings) {
        let Settings {
            exec,
            args,
            env,
            cwd,
            silent,
            uid,
            gid,
            protocol,
            output,
        } = later;
        self.exec = exec.or(self.exec.take());
        self.args = args.or(self.args.take());
        self.env.extend(env);
        self.cwd = cwd.or(self.cwd.take());
        self.silent = silent.or(self.silent);
        self.uid = uid.or(self.uid);
        self.gid = gid.or(self.gid);
        self.protocol = protocol.or(self.protocol);
        self.output = output.or(self.output);
    }

    /// Fills the fields that were never set with their defaults.
    pub(crate) fn with_defaults(mut self) -> Settings {
        if self.exec.is_none() {
            self.exec = std::env::current_exe().ok();
        }
        if self.args.is_none() {
            self.args = Some(std::env::args_os().skip(1).collect());
        }
        if self.silent.is_none() {
            self.silent = Some(false);
        }
        self
    }

    /// Sets the program to execute.
    pub fn exec(mut self, path: impl Into<PathBuf>) -> Self {
        self.exec = Some(path.into());
        self
    }

    /// Sets the arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// Adds an environment variable for every worker.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets the working directory.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Pipes worker output through the primary, line by line, with a worker prefix.
    pub fn silent(mut self, on: bool) -> Self {
        self.silent = Some(on);
        self
    }

    /// Sets the protocol the workers speak.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// Sets how forwarded output is written (with [`Settings::silent`]).
    pub fn output(mut self, output: Output) -> Self {
        self.output = Some(output);
        self
    }

    /// Runs workers as this user and group.
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        self.uid = Some(uid);
        self.gid = Some(gid);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_is_cumulative() {
        let mut s = Settings::default();
        s.merge(Settings::default().exec("/bin/a").args(["x"]));
        s.merge(Settings::default().silent(true).env("A", "1"));
        s.merge(Settings::default().exec("/bin/b").env("A", "2"));
        assert_eq!(s.exec, Some("/bin/b".into()));
        assert_eq!(s.args, Some(vec!["x".into()]));
        assert_eq!(s.silent, Some(true));
        assert_eq!(
            s.env,
            vec![("A".into(), "1".into()), ("A".into(), "2".into())]
        );
        let d = s.clone().with_defaults();
        assert_eq!(d.exec, s.exec);
        assert_eq!(Settings::default().with_defaults().silent, Some(false));
    }
}
