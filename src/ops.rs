//! ops (being written).
