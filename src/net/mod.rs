//! Loop-driven sockets (being built for the event-loop issue).
