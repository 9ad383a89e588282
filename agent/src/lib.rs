//! The traffic-agent (temporary stub while building).
mod netlink;
pub mod nft;
#[cfg(test)]
mod testns;
