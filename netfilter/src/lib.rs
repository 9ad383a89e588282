//! nf_tables spoken over netlink, without the `nft` binary (our images are `FROM scratch`):
//! the netlink socket and message codec (`netlink.rs`), the tables, chains and redirect rules
//! we install, inspect and remove (`nft.rs`), and, for tests, fresh network namespaces wired
//! with veth pairs (`testns.rs`). Used by the traffic-agent (inbound: service ports redirected
//! to the agent) and the client daemon (outbound: the handler's TCP connections to the
//! cluster redirected to the daemon's kernel-terminated listener), and in-kernel forwards
//! (`forward.rs`: the daemon's and the traffic-manager's `dnat` + `masquerade` rules), and the
//! namespace's listening TCP sockets over sock_diag (`sockdiag.rs`).
#![deny(missing_docs)]

pub mod forward;
#[allow(unsafe_code)]
// raw netlink sockets (socket, bind, sendto, recv): each block says why it is sound
mod netlink;
pub mod nft;
pub mod sockdiag;
#[cfg(any(test, feature = "testns"))]
#[allow(unsafe_code)] // unshare(2) into a fresh network namespace for tests
pub mod testns;

pub use netlink::interface_index;
pub use nft::NftError;
