//! JUnit XML: one test case per budget (being written).
