//! Chrome trace-event / Perfetto timeline (trace.json) (being written).
