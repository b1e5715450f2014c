use super::*;

#[test]
fn main_network_uses_the_plain_kith_kad_protocol() {
    assert_eq!(kad_protocol("main"), "/kith/kad/1.0.0");
    assert_eq!(kad_protocol("testnet"), "/kith/testnet/kad/1.0.0");
}
