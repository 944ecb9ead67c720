//! Test guest: build `b` of the tag filter (see `tests/guests/tag-filter.rs`).

const TAG: &str = "b";

include!("../../tag-filter.rs");
