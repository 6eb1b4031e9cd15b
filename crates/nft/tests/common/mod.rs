//! What the nft tests share: compiling an example policy the way `ward` would, with fixed
//! stand-ins for what the DNS proxy would look up on the running system.

use std::path::Path;

pub fn compile_example(path: &Path) -> nft::Compiled {
    let (checked, _) = policy::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // The DNS proxy's defaults come from the system; fixed stand-ins keep the files stable.
    let dns = nft::dnsplan::plan(
        &checked.policy,
        |_| vec!["192.168.1.1".parse().expect("ip")],
        || vec!["192.0.2.53".parse().expect("ip")],
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let opts = nft::Options {
        comment: Some("ward sha256=golden".into()),
        dns,
        ..nft::Options::default()
    };
    nft::compile(&checked.policy, &opts)
}
