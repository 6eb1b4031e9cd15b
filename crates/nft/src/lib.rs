//! The kernel data plane: compiles a validated policy into one nftables table and installs,
//! reads back and removes it through libnftables, in-process. Not for: parsing policy files.

pub mod compile;
pub mod conntrack;
pub mod dnsplan;
pub mod learn;
pub mod live;
mod netlink;
pub mod netns;
pub mod nflog;
pub mod render;
pub mod schema;
pub mod session;

pub use compile::{compile, Compiled, DnsProxy, Options, Stats};
pub use session::{Format, NftError, Session};
