//! Fuzzes the claims of a validly signed token: the bytes are the JWT payload, signed with the
//! verifier's own key, so every claim (`exp` up to `u64::MAX` above all) reaches the checks
//! behind the signature. Verification must not panic, and the expiry timer a socket arms from an
//! accepted token (`shared::auth::expires_in`) must not overflow an `Instant`.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use shared::auth::{expires_in, JwtSettings, KeySource, Verifier, EXPIRY_HORIZON_MAX};
use shared::ids::now_unix_ms;

const SECRET: &[u8] = b"fuzz-only-secret-0123456789-abcdefghijkl";

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        Verifier::new(&JwtSettings {
            algorithm: jsonwebtoken::Algorithm::HS256,
            key: KeySource::Secret(SECRET.to_vec()),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(5),
        })
        .unwrap()
    })
}

fuzz_target!(|payload: &[u8]| {
    let input = format!(
        "{}.{}",
        B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        B64.encode(payload)
    );
    let signature = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap();
    let token = format!("{input}.{signature}");
    if let Ok(id) = verifier().verify(&token) {
        let left = expires_in(id.expires_at, now_unix_ms() / 1000);
        assert!(left <= EXPIRY_HORIZON_MAX);
        let _ = Instant::now() + left + Duration::from_millis(10);
    }
});
