//! placeholder until the test app lands
