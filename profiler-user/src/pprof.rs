//! pprof output (profile.pb.gz) (being written).
