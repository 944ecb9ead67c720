//! Test guest: build `a` of the tag filter (see `tests/guests/tag-filter.rs`).

const TAG: &str = "a";

include!("../../tag-filter.rs");
