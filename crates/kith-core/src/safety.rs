use libp2p::identity::PublicKey;

/// A safety number for the pair (`a`, `b`): 12 groups of 5 digits, the same whichever side
/// computes it. Two people read it to each other (in person or on a call) to be sure no one sits
/// between them; a name lookup alone cannot prove that.
pub fn safety_number(a: &PublicKey, b: &PublicKey) -> String {
    let mut keys = [a.encode_protobuf(), b.encode_protobuf()];
    keys.sort();
    let mut hasher = blake3::Hasher::new_derive_key("kith safety number v1");
    for key in &keys {
        hasher.update(&(key.len() as u64).to_be_bytes());
        hasher.update(key);
    }
    let mut out = [0u8; 60];
    hasher.finalize_xof().fill(&mut out);
    out.chunks(5)
        .map(|chunk| {
            let n = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use libp2p::identity::Keypair;

    use super::*;

    #[test]
    fn both_sides_compute_the_same_number_and_other_pairs_differ() {
        let a = Keypair::generate_ed25519().public();
        let b = Keypair::generate_ed25519().public();
        let c = Keypair::generate_ed25519().public();
        let ab = safety_number(&a, &b);
        assert_eq!(ab, safety_number(&b, &a));
        assert_ne!(ab, safety_number(&a, &c));
        let groups: Vec<&str> = ab.split(' ').collect();
        assert_eq!(groups.len(), 12);
        assert!(
            groups
                .iter()
                .all(|g| g.len() == 5 && g.bytes().all(|b| b.is_ascii_digit()))
        );
    }
}
