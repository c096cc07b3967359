//! The JWT attack list (docs/SECURITY.md): every forged, altered, misdirected or stale token is
//! refused with the matching error, for HMAC, RSA and EdDSA configurations and for key rotation
//! by `kid`. The RSA and Ed25519 key pairs under `tests/keys/` are test-only.

use std::path::PathBuf;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::Algorithm;
use shared::auth::{
    expires_in, load_keys_file, AuthError, ClaimRules, Claims, JwtSettings, KeyError, KeySource,
    KeySpec, Signer, Verifier, EXPIRY_HORIZON_MAX,
};
use shared::config::JwtArgs;
use shared::ids::now_unix_ms;

const SECRET: &[u8] = b"attack-test-secret-0123456789-abcdefghij";
const OTHER_SECRET: &[u8] = b"another-secret-0123456789-abcdefghijklmn";

fn keys_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(keys_dir().join(name)).expect("test key")
}

fn now() -> u64 {
    now_unix_ms() / 1000
}

fn claims(sub: &str) -> Claims {
    Claims {
        sub: sub.into(),
        exp: now() + 600,
        iat: Some(now()),
        nbf: None,
        iss: None,
        aud: None,
        scope: None,
    }
}

fn rules() -> ClaimRules {
    ClaimRules {
        issuer: None,
        audience: None,
        leeway: Duration::from_secs(5),
    }
}

fn hmac_verifier() -> Verifier {
    Verifier::new(&JwtSettings {
        algorithm: Algorithm::HS256,
        key: KeySource::Secret(SECRET.to_vec()),
        issuer: None,
        audience: None,
        leeway: Duration::from_secs(5),
    })
    .unwrap()
}

fn rsa_verifier() -> Verifier {
    Verifier::new(&JwtSettings {
        algorithm: Algorithm::RS256,
        key: KeySource::PublicKeyFile(keys_dir().join("rsa_public.pem")),
        issuer: None,
        audience: None,
        leeway: Duration::from_secs(5),
    })
    .unwrap()
}

/// A token assembled by hand: any header, any payload, any signature bytes.
fn forge(header: &str, payload: &str, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        B64.encode(header),
        B64.encode(payload),
        B64.encode(signature)
    )
}

fn hs256(key: &[u8], signing_input: &str) -> Vec<u8> {
    // HMAC-SHA256 through jsonwebtoken itself, so the test needs no crypto crate of its own.
    let sig = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(key),
        Algorithm::HS256,
    )
    .unwrap();
    B64.decode(sig).unwrap()
}

#[test]
fn valid_tokens_pass() {
    let s = Signer::hmac(Algorithm::HS256, SECRET);
    assert_eq!(
        hmac_verifier()
            .verify(&s.sign(&claims("alice")))
            .unwrap()
            .subject,
        "alice"
    );
    let r = Signer::from_private_pem(Algorithm::RS256, &pem("rsa_private.pem")).unwrap();
    assert_eq!(
        rsa_verifier()
            .verify(&r.sign(&claims("bob")))
            .unwrap()
            .subject,
        "bob"
    );
}

#[test]
fn alg_none_is_refused() {
    let payload = format!(r#"{{"sub":"alice","exp":{}}}"#, now() + 600);
    for header in [
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"None","typ":"JWT"}"#,
        r#"{"alg":"NONE"}"#,
    ] {
        let t = forge(header, &payload, b"");
        assert!(hmac_verifier().verify(&t).is_err(), "{header}");
        assert!(rsa_verifier().verify(&t).is_err(), "{header}");
        // Without the trailing dot too.
        let t = t.trim_end_matches('.').to_string();
        assert!(hmac_verifier().verify(&t).is_err(), "{header}");
    }
}

#[test]
fn hmac_signed_with_the_public_key_is_refused() {
    // The classic confusion: the attacker signs HS256 with the server's RSA public key as the
    // HMAC secret, hoping the server uses its "key" with the algorithm the token names.
    let public = pem("rsa_public.pem");
    let header = r#"{"alg":"HS256","typ":"JWT"}"#;
    let payload = format!(r#"{{"sub":"mallory","exp":{}}}"#, now() + 600);
    let input = format!("{}.{}", B64.encode(header), B64.encode(&payload));
    let t = format!("{input}.{}", B64.encode(hs256(&public, &input)));
    assert_eq!(rsa_verifier().verify(&t), Err(AuthError::WrongAlgorithm));
    // And the same with the PEM trimmed, as some libraries would use it.
    let trimmed = String::from_utf8(public).unwrap().trim().to_string();
    let t = format!("{input}.{}", B64.encode(hs256(trimmed.as_bytes(), &input)));
    assert_eq!(rsa_verifier().verify(&t), Err(AuthError::WrongAlgorithm));
}

#[test]
fn other_algorithm_of_the_same_family_is_refused() {
    let hs512 = Signer::hmac(Algorithm::HS512, SECRET);
    assert_eq!(
        hmac_verifier().verify(&hs512.sign(&claims("a"))),
        Err(AuthError::WrongAlgorithm)
    );
    let rs512 = Signer::from_private_pem(Algorithm::RS512, &pem("rsa_private.pem")).unwrap();
    assert_eq!(
        rsa_verifier().verify(&rs512.sign(&claims("a"))),
        Err(AuthError::WrongAlgorithm)
    );
}

#[test]
fn wrong_signature_and_tampered_payload_are_refused() {
    let good = Signer::hmac(Algorithm::HS256, SECRET).sign(&claims("alice"));
    let other = Signer::hmac(Algorithm::HS256, OTHER_SECRET).sign(&claims("alice"));
    assert_eq!(hmac_verifier().verify(&other), Err(AuthError::BadSignature));
    // Swap the payload for another user's, keeping the signature.
    let parts: Vec<&str> = good.split('.').collect();
    let evil = B64.encode(format!(r#"{{"sub":"admin","exp":{}}}"#, now() + 600));
    let tampered = format!("{}.{}.{}", parts[0], evil, parts[2]);
    assert_eq!(
        hmac_verifier().verify(&tampered),
        Err(AuthError::BadSignature)
    );
    // Flip one signature bit.
    let mut sig = B64.decode(parts[2]).unwrap();
    sig[0] ^= 1;
    let flipped = format!("{}.{}.{}", parts[0], parts[1], B64.encode(sig));
    assert_eq!(
        hmac_verifier().verify(&flipped),
        Err(AuthError::BadSignature)
    );
    // An RSA token signed by another key.
    let ed_as_rsa = Signer::hmac(Algorithm::HS256, SECRET).sign(&claims("x"));
    assert!(rsa_verifier().verify(&ed_as_rsa).is_err());
}

#[test]
fn expired_not_yet_valid_and_leeway() {
    let s = Signer::hmac(Algorithm::HS256, SECRET);
    let v = hmac_verifier();
    let mut c = claims("a");
    c.exp = now() - 60;
    assert_eq!(v.verify(&s.sign(&c)), Err(AuthError::Expired));
    // Within the 5 s leeway: still accepted.
    c.exp = now() - 1;
    assert!(v.verify(&s.sign(&c)).is_ok());
    let mut c = claims("a");
    c.nbf = Some(now() + 120);
    assert_eq!(v.verify(&s.sign(&c)), Err(AuthError::NotYetValid));
    c.nbf = Some(now() + 1);
    assert!(v.verify(&s.sign(&c)).is_ok(), "nbf within the leeway");
}

/// Any `exp` a validly signed token may carry, `u64::MAX` included, verifies without a panic, and
/// the time until it (what servers arm timers with) is clamped so that `Instant + it` cannot
/// overflow.
#[test]
fn huge_expiry_is_accepted_and_clamped() {
    let s = Signer::hmac(Algorithm::HS256, SECRET);
    let v = hmac_verifier();
    for exp in [
        u64::MAX,
        u64::MAX - 1,
        i64::MAX as u64,
        (i64::MAX as u64) + 1,
        1 << 53,
    ] {
        let mut c = claims("a");
        c.exp = exp;
        let id = v
            .verify(&s.sign(&c))
            .unwrap_or_else(|e| panic!("exp {exp}: {e}"));
        assert_eq!(id.expires_at, exp);
        let left = expires_in(id.expires_at, now());
        assert_eq!(left, EXPIRY_HORIZON_MAX, "exp {exp}");
        let _ = std::time::Instant::now() + left;
        let _ = tokio::time::Instant::now() + left;
    }
    // A float `exp` (beyond any integer) is refused, not rounded.
    let (header, payload) = (
        r#"{"alg":"HS256","typ":"JWT"}"#,
        r#"{"sub":"a","exp":1e300}"#,
    );
    let input = format!("{}.{}", B64.encode(header), B64.encode(payload));
    let huge_float = forge(header, payload, &hs256(SECRET, &input));
    assert!(v.verify(&huge_float).is_err());
}

proptest::proptest! {
    // `PROPTEST_CASES` raises the count for longer runs.
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
    ))]

    /// Whatever `exp` is signed and whatever the clock says, verification and the expiry timer
    /// never panic.
    #[test]
    fn any_expiry_never_panics(exp in proptest::prelude::any::<u64>(), now_s in proptest::prelude::any::<u64>()) {
        let mut c = claims("a");
        c.exp = exp;
        let s = Signer::hmac(Algorithm::HS256, SECRET);
        if let Ok(id) = hmac_verifier().verify(&s.sign(&c)) {
            proptest::prop_assert_eq!(id.expires_at, exp);
        }
        let left = expires_in(exp, now_s);
        proptest::prop_assert!(left <= EXPIRY_HORIZON_MAX);
        let _ = std::time::Instant::now() + left + std::time::Duration::from_millis(10);
    }
}

#[test]
fn missing_exp_or_sub_is_refused() {
    let header = r#"{"alg":"HS256","typ":"JWT"}"#;
    for payload in [
        r#"{"sub":"a"}"#.to_string(),
        format!(r#"{{"exp":{}}}"#, now() + 60),
    ] {
        let input = format!("{}.{}", B64.encode(header), B64.encode(&payload));
        let t = format!("{input}.{}", B64.encode(hs256(SECRET, &input)));
        assert!(hmac_verifier().verify(&t).is_err(), "{payload}");
    }
}

#[test]
fn wrong_issuer_and_audience_are_refused() {
    let v = Verifier::with_keys(
        &[KeySpec {
            kid: None,
            algorithm: Algorithm::HS256,
            key: KeySource::Secret(SECRET.to_vec()),
        }],
        &ClaimRules {
            issuer: Some("https://auth.chat".into()),
            audience: Some("chat".into()),
            leeway: Duration::from_secs(5),
        },
    )
    .unwrap();
    let sign = |iss: Option<&str>, aud: Option<&str>| {
        Signer::hmac(Algorithm::HS256, SECRET)
            .with_issuer_audience(iss.map(Into::into), aud.map(Into::into))
            .token("a", Duration::from_secs(60), None)
    };
    assert!(v
        .verify(&sign(Some("https://auth.chat"), Some("chat")))
        .is_ok());
    assert_eq!(
        v.verify(&sign(Some("https://evil"), Some("chat"))),
        Err(AuthError::WrongIssuer)
    );
    assert_eq!(
        v.verify(&sign(Some("https://auth.chat"), Some("other"))),
        Err(AuthError::WrongAudience)
    );
    assert!(matches!(
        v.verify(&sign(None, Some("chat"))),
        Err(AuthError::MissingClaim(_))
    ));
}

#[test]
fn rotation_picks_the_key_by_kid() {
    let v = Verifier::with_keys(
        &[
            KeySpec {
                kid: Some("old".into()),
                algorithm: Algorithm::HS256,
                key: KeySource::Secret(SECRET.to_vec()),
            },
            KeySpec {
                kid: Some("new".into()),
                algorithm: Algorithm::RS256,
                key: KeySource::PublicKeyFile(keys_dir().join("rsa_public.pem")),
            },
            KeySpec {
                kid: Some("ed".into()),
                algorithm: Algorithm::EdDSA,
                key: KeySource::PublicKeyFile(keys_dir().join("ed_public.pem")),
            },
        ],
        &rules(),
    )
    .unwrap();
    let old = Signer::hmac(Algorithm::HS256, SECRET).with_kid(Some("old".into()));
    let new = Signer::from_private_pem(Algorithm::RS256, &pem("rsa_private.pem"))
        .unwrap()
        .with_kid(Some("new".into()));
    let ed = Signer::from_private_pem(Algorithm::EdDSA, &pem("ed_private.pem"))
        .unwrap()
        .with_kid(Some("ed".into()));
    assert!(v.verify(&old.sign(&claims("a"))).is_ok());
    assert!(v.verify(&new.sign(&claims("a"))).is_ok());
    assert!(v.verify(&ed.sign(&claims("a"))).is_ok());
    // Unknown kid, and no kid at all when every key has one.
    let stranger = Signer::hmac(Algorithm::HS256, SECRET).with_kid(Some("nope".into()));
    assert_eq!(
        v.verify(&stranger.sign(&claims("a"))),
        Err(AuthError::UnknownKey)
    );
    let no_kid = Signer::hmac(Algorithm::HS256, SECRET);
    assert_eq!(
        v.verify(&no_kid.sign(&claims("a"))),
        Err(AuthError::UnknownKey)
    );
    // A valid HMAC signature under the RSA key's kid: the kid's pinned algorithm wins.
    let confused = Signer::hmac(Algorithm::HS256, SECRET).with_kid(Some("new".into()));
    assert_eq!(
        v.verify(&confused.sign(&claims("a"))),
        Err(AuthError::WrongAlgorithm)
    );
    // Right kid, signed with another key.
    let forged = Signer::hmac(Algorithm::HS256, OTHER_SECRET).with_kid(Some("old".into()));
    assert_eq!(
        v.verify(&forged.sign(&claims("a"))),
        Err(AuthError::BadSignature)
    );
}

#[test]
fn garbage_and_oversized_tokens_are_refused() {
    let v = hmac_verifier();
    for t in ["", ".", "..", "a.b.c", "not-a-token", "e30.e30.", "\u{0}"] {
        assert!(v.verify(t).is_err(), "{t:?}");
    }
    let huge = "a".repeat(100_000);
    assert!(v.verify(&huge).is_err());
}

#[test]
fn keys_file_loads_and_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    std::fs::copy(keys_dir().join("rsa_public.pem"), dir.path().join("r1.pem")).unwrap();
    std::fs::write(
        &path,
        format!(
            r#"{{"keys":[{{"kid":"h1","alg":"HS256","secret":"{}"}},{{"kid":"r1","alg":"RS256","public_key_file":"r1.pem"}}]}}"#,
            String::from_utf8_lossy(SECRET)
        ),
    )
    .unwrap();
    let specs = load_keys_file(&path).unwrap();
    assert_eq!(specs.len(), 2);
    let args = JwtArgs {
        jwt_algorithm: "HS256".into(),
        jwt_secret: Some(String::from_utf8_lossy(OTHER_SECRET).into_owned()),
        jwt_keys_file: Some(path.clone()),
        jwt_leeway: Duration::from_secs(5),
        ..Default::default()
    };
    assert!(!args.is_unconfigured());
    let v = args.verifier().unwrap();
    let h1 = Signer::hmac(Algorithm::HS256, SECRET).with_kid(Some("h1".into()));
    assert!(v.verify(&h1.sign(&claims("a"))).is_ok());
    // JWT_SECRET still verifies tokens without a kid.
    let plain = Signer::hmac(Algorithm::HS256, OTHER_SECRET);
    assert!(v.verify(&plain.sign(&claims("a"))).is_ok());

    std::fs::write(&path, r#"{"keys":[{"kid":"x","alg":"HS256"}]}"#).unwrap();
    let e = load_keys_file(&path).unwrap_err();
    assert!(e.to_string().contains("exactly one of"), "{e}");
    std::fs::write(&path, r#"{"keys":[{"kid":"x","alg":"none","secret":"s"}]}"#).unwrap();
    assert!(matches!(load_keys_file(&path), Err(KeyError::Algorithm(_))));
    std::fs::write(&path, "not json").unwrap();
    assert!(load_keys_file(&path)
        .unwrap_err()
        .to_string()
        .contains("keys.json"));
    let dup = [
        KeySpec {
            kid: Some("a".into()),
            algorithm: Algorithm::HS256,
            key: KeySource::Secret(SECRET.to_vec()),
        },
        KeySpec {
            kid: Some("a".into()),
            algorithm: Algorithm::HS256,
            key: KeySource::Secret(SECRET.to_vec()),
        },
    ];
    assert!(matches!(
        Verifier::with_keys(&dup, &rules()),
        Err(KeyError::DuplicateKid(_))
    ));
    let mut wide = rules();
    wide.leeway = Duration::from_secs(3600);
    assert!(matches!(
        Verifier::with_keys(&dup[..1], &wide),
        Err(KeyError::Leeway(_))
    ));
}
