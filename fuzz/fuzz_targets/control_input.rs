//! The control plane's other inputs: join tokens, JWTs, join requests,
//! server connection advisories, admin requests and event signatures. None
//! may panic; a token that decodes must encode back to an equal token.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = std::str::from_utf8(rest).unwrap_or("");
    match which % 6 {
        0 => {
            if let Ok(token) = fleet_auth::token::JoinToken::decode(text) {
                let again = token.encode().expect("a decoded token encodes");
                assert_eq!(
                    fleet_auth::token::JoinToken::decode(&again).expect("round trip"),
                    token
                );
            }
        }
        1 => {
            let _ = fleet_auth::jwt::decode(text);
        }
        2 => {
            let _ = serde_json::from_slice::<schemas::join::JoinRequest>(rest);
        }
        3 => {
            let _ = node_registry::worker::read_connection_advisory(rest);
        }
        4 => {
            let _ = node_registry::worker::read_admin_request(rest);
        }
        _ => {
            // A real user key (its seed is unknown): no payload and
            // signature text the fuzzer makes may verify, nor panic.
            let key = fleet_auth::EventKey::parse(
                "UDL2ORWZHOJ3QJSIDHSVH5KRQCB2VJPWZKCDBUEW5K7KGDBNSSL3RHH4",
            )
            .expect("a valid public key");
            if let Some(split) = text.find('|') {
                assert!(!key.verify(&rest[..split], &text[split + 1..]));
            }
            let _ = fleet_auth::EventKey::parse(text);
        }
    }
});
