//! The traffic-manager chart without a `helm` binary: [`template`] (Go-template renderer),
//! [`chart`] (the chart shipped in this binary and its values), [`apply`] (server-side apply of
//! a release and its record) and [`agents`] (removing every traffic-agent on uninstall).

pub mod agents;
pub mod apply;
pub mod chart;
pub mod template;
