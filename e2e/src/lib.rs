//! Test harness for the multi-process tests in `tests/`.
