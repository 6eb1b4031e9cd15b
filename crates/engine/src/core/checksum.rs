//! Internet checksums (RFC 1071) updated incrementally after a header field changes, by
//! RFC 1624's `HC' = ~(~HC + ~m + m')`, so forwarding and NAT never re-read a payload.
//!
//! Eqn. 3 of RFC 1624 rather than the older eqn. 2 of RFC 1141: it gives what a full
//! recomputation gives, 0x0000 included, whenever the old checksum was itself a full
//! computation's result and the data it covers is not all zeros. The remaining case, a sender's
//! 0xFFFF standing for 0x0000 (the same one's-complement value), stays a value that verifies.

/// The checksum after one 16-bit word it covers changed from `old` to `new`.
pub fn update(checksum: u16, old: u16, new: u16) -> u16 {
    let sum = u64::from(!checksum) + u64::from(!old) + u64::from(new);
    !fold(sum)
}

/// Adds the carries back in (end-around carry) until the sum fits 16 bits.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 over 16-bit words, written out so the tests do not lean on the code they test.
    fn full(words: &[u16]) -> u16 {
        let mut sum: u32 = words.iter().map(|&w| u32::from(w)).sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn rfc_1624_worked_example() {
        // RFC 1624 §4: the other header words sum to 0xCD7A, and a word changes from 0x5555
        // to 0x3285. The checksum 0xDD2F must become 0x0000, where eqn. 2 gives 0xFFFF.
        let hc = full(&[0xcd7a, 0x5555]);
        assert_eq!(hc, 0xdd2f);
        assert_eq!(full(&[0xcd7a, 0x3285]), 0x0000);
        assert_eq!(update(hc, 0x5555, 0x3285), 0x0000);
    }

    proptest::proptest! {
        #[test]
        fn one_word_matches_a_full_recomputation(
            mut words in proptest::collection::vec(proptest::num::u16::ANY, 1..30),
            at in proptest::num::usize::ANY,
            new in proptest::prop_oneof![
                proptest::num::u16::ANY,
                proptest::strategy::Just(0u16),
                proptest::strategy::Just(0xffffu16),
            ],
        ) {
            let at = at % words.len();
            let before = full(&words);
            let old = words[at];
            words[at] = new;
            let after = full(&words);
            // Exact unless the new data is all zeros (its full checksum is 0xFFFF, "-0",
            // where the update gives the equivalent 0x0000).
            if words.iter().any(|&w| w != 0) {
                proptest::prop_assert_eq!(update(before, old, new), after);
            } else {
                proptest::prop_assert!(update(before, old, new) == 0 && after == 0xffff);
            }
        }
    }
}
