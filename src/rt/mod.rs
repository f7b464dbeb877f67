//! The event loop (being built for the event-loop issue).
