//! JWT verification and (for development and tests) minting. The algorithm is pinned by
//! configuration, `exp` and `sub` are required, `iss`/`aud` are checked when configured and the
//! leeway is small. Tokens with a `scope` claim are service tokens; all others are user tokens.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::ids::{now_unix_ms, validate_user_id};

/// Built-in HS256 secret used only when `chat-api embedded` starts with no key configured.
pub const DEV_SECRET: &str = "development-only-secret-change-me-0123456789";

/// The claims this system reads and writes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Space-separated scopes; present only on service tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// Who is calling, after verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    /// Empty for user tokens.
    pub scopes: Vec<String>,
    /// Unix seconds.
    pub expires_at: u64,
    /// The `iat` claim (Unix seconds), when the token has one; revocation compares it with the
    /// user's not-before (`crate::revocation`), and a token without it loses to any revoke.
    pub issued_at: Option<u64>,
}

impl Identity {
    pub fn is_service(&self) -> bool {
        !self.scopes.is_empty()
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no token: send `Authorization: Bearer <token>` or `access_token=<token>`")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token algorithm is not the configured one")]
    WrongAlgorithm,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token issuer is not the configured one")]
    WrongIssuer,
    #[error("token audience is not the configured one")]
    WrongAudience,
    #[error("token lacks the required `{0}` claim")]
    MissingClaim(String),
    #[error("token `kid` names no configured key")]
    UnknownKey,
    #[error("token is not valid: {0}")]
    Invalid(String),
}

/// A token that does not decode, said in words (the library's own names, such as
/// `InvalidToken`, mean nothing to a client).
fn malformed(e: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    let what = match e.kind() {
        ErrorKind::InvalidToken => {
            "it is not three base64url parts (header.claims.signature)".into()
        }
        ErrorKind::Base64(_) => "a part is not valid base64url".into(),
        ErrorKind::Json(e) => format!("its header or claims are not the expected JSON ({e})"),
        ErrorKind::Utf8(_) => "a part is not UTF-8".into(),
        ErrorKind::MissingAlgorithm => "its header names no algorithm".into(),
        _ => format!("it could not be decoded ({e})"),
    };
    AuthError::Invalid(what)
}

impl AuthError {
    /// A short label for metrics (`reason`), stable across versions.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Expired => "expired",
            AuthError::BadSignature => "bad_signature",
            AuthError::WrongAlgorithm => "wrong_algorithm",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::UnknownKey => "unknown_kid",
            AuthError::Invalid(_) => "invalid",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("JWT_ALGORITHM {0:?} is not supported: use HS256, HS384, HS512, RS256, RS384, RS512 or EdDSA")]
    Algorithm(String),
    #[error("{algorithm} needs JWT_SECRET")]
    MissingSecret { algorithm: String },
    #[error("{algorithm} needs JWT_PUBLIC_KEY_FILE (a PEM public key)")]
    MissingPublicKey { algorithm: String },
    #[error("cannot read JWT_PUBLIC_KEY_FILE {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("JWT_PUBLIC_KEY_FILE {path} is not a valid PEM key for {algorithm}: {reason}")]
    Pem {
        path: String,
        algorithm: String,
        reason: String,
    },
    #[error("JWT_SECRET must be at least 32 bytes for HMAC algorithms")]
    ShortSecret,
    #[error("no verification key configured")]
    NoKeys,
    #[error("key id {0:?} is configured twice (each kid once, at most one key without a kid)")]
    DuplicateKid(Option<String>),
    #[error("JWT_LEEWAY {0:?} is too large: at most 5m (it covers clock skew only)")]
    Leeway(Duration),
    #[error("JWT_KEYS_FILE {path}: {reason}")]
    KeysFile { path: String, reason: String },
}

pub fn parse_algorithm(name: &str) -> Result<Algorithm, KeyError> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "HS384" => Ok(Algorithm::HS384),
        "HS512" => Ok(Algorithm::HS512),
        "RS256" => Ok(Algorithm::RS256),
        "RS384" => Ok(Algorithm::RS384),
        "RS512" => Ok(Algorithm::RS512),
        "EdDSA" => Ok(Algorithm::EdDSA),
        other => Err(KeyError::Algorithm(other.to_string())),
    }
}

/// One entry of a `JWT_KEYS_FILE` (JSON: `{"keys": [ ... ]}`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFileEntry {
    kid: String,
    alg: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    public_key_file: Option<std::path::PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    keys: Vec<KeysFileEntry>,
}

/// Reads a `JWT_KEYS_FILE`: `{"keys": [{"kid": "2026-11", "alg": "HS256", "secret": "..."},
/// {"kid": "rsa-1", "alg": "RS256", "public_key_file": "rsa-1.pem"}]}`. Relative key paths are
/// relative to the file's directory. Every entry needs a `kid` and exactly one of `secret` or
/// `public_key_file`.
pub fn load_keys_file(path: &std::path::Path) -> Result<Vec<KeySpec>, KeyError> {
    let display = path.display().to_string();
    let fail = |reason: String| KeyError::KeysFile {
        path: display.clone(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let file: KeysFile = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
    let dir = path.parent().unwrap_or_else(|| std::path::Path::new("."));
    file.keys
        .into_iter()
        .map(|e| {
            if e.kid.is_empty() || e.kid.len() > 128 {
                return Err(fail("every key needs a kid of 1-128 bytes".into()));
            }
            let algorithm = parse_algorithm(&e.alg)?;
            let key = match (e.secret, e.public_key_file) {
                (Some(s), None) => KeySource::Secret(s.into_bytes()),
                (None, Some(p)) => KeySource::PublicKeyFile(dir.join(p)),
                _ => {
                    return Err(fail(format!(
                        "key {:?} needs exactly one of secret or public_key_file",
                        e.kid
                    )))
                }
            };
            Ok(KeySpec {
                kid: Some(e.kid),
                algorithm,
                key,
            })
        })
        .collect()
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// Key material as configured.
#[derive(Clone, Debug)]
pub enum KeySource {
    Secret(Vec<u8>),
    /// PEM file path; the file is read once at start-up.
    PublicKeyFile(std::path::PathBuf),
}

/// Verification settings, typed.
#[derive(Clone, Debug)]
pub struct JwtSettings {
    pub algorithm: Algorithm,
    pub key: KeySource,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
}

/// One verification key: the key material, its pinned algorithm and, for key rotation, the `kid`
/// that selects it. A key without a `kid` verifies tokens whose header has no `kid`.
#[derive(Clone, Debug)]
pub struct KeySpec {
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    pub key: KeySource,
}

/// Claim checks shared by every key.
#[derive(Clone, Debug)]
pub struct ClaimRules {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
}

/// Largest leeway accepted by configuration: clock skew, not a grace period.
pub const LEEWAY_MAX: Duration = Duration::from_secs(300);

/// A decoding key with the validation rules pinned to its algorithm.
#[derive(Clone)]
struct VerifyKey {
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
    algorithm: Algorithm,
}

/// Verifies tokens against a set of keys, each with one pinned algorithm. The key is chosen by
/// the token's `kid` header (or is the key without a `kid` when the token has none); the
/// algorithm always comes from configuration, never from the token, so `alg: none` and
/// HMAC-signed-with-the-public-key tokens are refused.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<VerifyKey>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<_> = self
            .keys
            .iter()
            .map(|k| (k.kid.clone(), k.algorithm))
            .collect();
        f.debug_struct("Verifier")
            .field("keys", &keys)
            .finish_non_exhaustive()
    }
}

fn decoding_key(spec: &KeySpec) -> Result<DecodingKey, KeyError> {
    let alg = spec.algorithm;
    let name = format!("{alg:?}");
    match (&spec.key, is_hmac(alg)) {
        (KeySource::Secret(s), true) => {
            if s.len() < 32 {
                return Err(KeyError::ShortSecret);
            }
            Ok(DecodingKey::from_secret(s))
        }
        (KeySource::Secret(_), false) => Err(KeyError::MissingPublicKey { algorithm: name }),
        (KeySource::PublicKeyFile(_), true) => Err(KeyError::MissingSecret { algorithm: name }),
        (KeySource::PublicKeyFile(path), false) => {
            let display = path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| KeyError::Read {
                path: display.clone(),
                source,
            })?;
            let parsed = match alg {
                Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                _ => DecodingKey::from_rsa_pem(&pem),
            };
            parsed.map_err(|e| KeyError::Pem {
                path: display,
                algorithm: name,
                reason: e.to_string(),
            })
        }
    }
}

impl Verifier {
    /// A verifier with the one configured key (no `kid`).
    pub fn new(settings: &JwtSettings) -> Result<Verifier, KeyError> {
        Verifier::with_keys(
            &[KeySpec {
                kid: None,
                algorithm: settings.algorithm,
                key: settings.key.clone(),
            }],
            &ClaimRules {
                issuer: settings.issuer.clone(),
                audience: settings.audience.clone(),
                leeway: settings.leeway,
            },
        )
    }

    /// A verifier for several keys (rotation): each `kid` at most once, at most one key without.
    pub fn with_keys(specs: &[KeySpec], rules: &ClaimRules) -> Result<Verifier, KeyError> {
        if specs.is_empty() {
            return Err(KeyError::NoKeys);
        }
        if rules.leeway > LEEWAY_MAX {
            return Err(KeyError::Leeway(rules.leeway));
        }
        let mut keys: Vec<VerifyKey> = Vec::with_capacity(specs.len());
        for spec in specs {
            if keys.iter().any(|k| k.kid == spec.kid) {
                return Err(KeyError::DuplicateKid(spec.kid.clone()));
            }
            let key = decoding_key(spec)?;
            let alg = spec.algorithm;
            let mut validation = Validation::new(alg);
            validation.algorithms = vec![alg];
            validation.leeway = rules.leeway.as_secs();
            validation.validate_exp = true;
            validation.validate_nbf = true;
            let mut required = vec!["exp", "sub"];
            required.extend(rules.issuer.as_ref().map(|_| "iss"));
            required.extend(rules.audience.as_ref().map(|_| "aud"));
            validation.set_required_spec_claims(&required);
            match &rules.issuer {
                Some(iss) => validation.set_issuer(&[iss]),
                None => validation.iss = None,
            }
            match &rules.audience {
                Some(aud) => validation.set_audience(&[aud]),
                None => validation.validate_aud = false,
            }
            keys.push(VerifyKey {
                kid: spec.kid.clone(),
                key,
                validation,
                algorithm: alg,
            });
        }
        Ok(Verifier { keys })
    }

    /// The algorithm of the first configured key.
    pub fn algorithm(&self) -> Algorithm {
        self.keys[0].algorithm
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        // Bounded before any parsing: a token is a header value, never kilobytes of claims.
        if token.len() > TOKEN_BYTES_MAX {
            return Err(AuthError::Invalid("token is too long".into()));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidAlgorithmName => AuthError::WrongAlgorithm,
            _ => malformed(&e),
        })?;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == header.kid)
            .ok_or(AuthError::UnknownKey)?;
        if header.alg != key.algorithm {
            return Err(AuthError::WrongAlgorithm);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    AuthError::WrongAlgorithm
                }
                ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
                ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
                _ => malformed(&e),
            },
        )?;
        let claims = data.claims;
        validate_user_id(&claims.sub).map_err(|e| AuthError::Invalid(format!("sub: {e}")))?;
        let scopes = claims
            .scope
            .as_deref()
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        Ok(Identity {
            subject: claims.sub,
            scopes,
            expires_at: claims.exp,
            issued_at: claims.iat,
        })
    }
}

/// Longest token accepted, in bytes.
pub const TOKEN_BYTES_MAX: usize = 4096;

/// The longest time until expiry a server plans with: a validly signed token may carry any `exp`
/// (up to `u64::MAX`), and `Instant + Duration` panics on overflow, so timers are capped here.
pub const EXPIRY_HORIZON_MAX: Duration = Duration::from_secs(366 * 24 * 3600);

/// Time from `now_unix_s` until `expires_at` (Unix seconds): zero once expired, at most
/// [`EXPIRY_HORIZON_MAX`], so that `Instant::now() + expires_in(..)` can never overflow.
pub fn expires_in(expires_at: u64, now_unix_s: u64) -> Duration {
    Duration::from_secs(expires_at.saturating_sub(now_unix_s)).min(EXPIRY_HORIZON_MAX)
}

/// Mints tokens (the `token` command and tests).
pub struct Signer {
    key: EncodingKey,
    algorithm: Algorithm,
    issuer: Option<String>,
    audience: Option<String>,
    kid: Option<String>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Signer {
    pub fn hmac(algorithm: Algorithm, secret: &[u8]) -> Signer {
        Signer {
            key: EncodingKey::from_secret(secret),
            algorithm,
            issuer: None,
            audience: None,
            kid: None,
        }
    }

    /// A signer for an asymmetric algorithm from a PEM private key.
    pub fn from_private_pem(algorithm: Algorithm, pem: &[u8]) -> Result<Signer, String> {
        let key = match algorithm {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
            _ => EncodingKey::from_rsa_pem(pem),
        }
        .map_err(|e| e.to_string())?;
        Ok(Signer {
            key,
            algorithm,
            issuer: None,
            audience: None,
            kid: None,
        })
    }

    pub fn with_issuer_audience(
        mut self,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Self {
        self.issuer = issuer;
        self.audience = audience;
        self
    }

    /// Puts `kid` in the header of the tokens this signer mints (key rotation).
    pub fn with_kid(mut self, kid: Option<String>) -> Self {
        self.kid = kid;
        self
    }

    /// A token for `sub` valid for `ttl`, with `scope` for service tokens.
    pub fn token(&self, sub: &str, ttl: Duration, scope: Option<&str>) -> String {
        let now = now_unix_ms() / 1000;
        let claims = Claims {
            sub: sub.to_string(),
            exp: now.saturating_add(ttl.as_secs()),
            iat: Some(now),
            nbf: None,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            scope: scope.map(str::to_owned),
        };
        self.sign(&claims)
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.key)
            .unwrap_or_else(|e| panic!("signing with a configured key cannot fail: {e}"))
    }
}

/// Takes the token from an `Authorization: Bearer` header value or an `access_token` query string.
pub fn token_from_request(authorization: Option<&str>, query: Option<&str>) -> Option<String> {
    if let Some(h) = authorization {
        let h = h.trim();
        if h.len() > 7 && h[..7].eq_ignore_ascii_case("bearer ") {
            return Some(h[7..].trim().to_string());
        }
    }
    query.and_then(|q| query_param(q, "access_token"))
}

/// The first value of `name` in a URL query string (`application/x-www-form-urlencoded`:
/// percent-escapes and `+` decoded, in names as in values).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;

    fn settings() -> JwtSettings {
        JwtSettings {
            algorithm: Algorithm::HS256,
            key: KeySource::Secret(DEV_SECRET.as_bytes().to_vec()),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(2),
        }
    }

    #[test]
    fn good_user_and_service_tokens() {
        let v = Verifier::new(&settings()).unwrap();
        let s = Signer::hmac(Algorithm::HS256, DEV_SECRET.as_bytes());
        let id = v
            .verify(&s.token("alice", Duration::from_secs(60), None))
            .unwrap();
        assert_eq!(id.subject, "alice");
        assert!(!id.is_service());
        let svc = v
            .verify(&s.token("billing", Duration::from_secs(60), Some("push other")))
            .unwrap();
        assert!(svc.is_service() && svc.has_scope("push") && !svc.has_scope("admin"));
    }

    #[test]
    fn rejects_expired_forged_none_and_malformed() {
        let v = Verifier::new(&settings()).unwrap();
        let s = Signer::hmac(Algorithm::HS256, DEV_SECRET.as_bytes());
        let now = now_unix_ms() / 1000;
        let expired = Claims {
            sub: "a".into(),
            exp: now - 30,
            iat: None,
            nbf: None,
            iss: None,
            aud: None,
            scope: None,
        };
        assert_eq!(v.verify(&s.sign(&expired)), Err(AuthError::Expired));
        let other = Signer::hmac(Algorithm::HS256, b"another-secret-that-is-long-enough-0000");
        assert_eq!(
            v.verify(&other.token("a", Duration::from_secs(60), None)),
            Err(AuthError::BadSignature)
        );
        let hs512 = Signer::hmac(Algorithm::HS512, DEV_SECRET.as_bytes());
        assert_eq!(
            v.verify(&hs512.token("a", Duration::from_secs(60), None)),
            Err(AuthError::WrongAlgorithm)
        );
        let none = format!(
            "{}.{}.",
            B64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            B64.encode(format!(r#"{{"sub":"a","exp":{}}}"#, now + 60).as_bytes())
        );
        assert!(v.verify(&none).is_err());
        let garbage = v.verify("not-a-token").unwrap_err().to_string();
        assert!(garbage.contains("three base64url parts"), "{garbage}");
        assert!(!garbage.contains("InvalidToken"), "{garbage}");
        let bad_sub = s.token("a b", Duration::from_secs(60), None);
        assert!(matches!(v.verify(&bad_sub), Err(AuthError::Invalid(_))));
        // `exp` is required.
        let no_exp = format!(
            "{}.{}.x",
            B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            B64.encode(br#"{"sub":"a"}"#)
        );
        assert!(v.verify(&no_exp).is_err());
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let mut st = settings();
        st.issuer = Some("chat".into());
        st.audience = Some("clients".into());
        let v = Verifier::new(&st).unwrap();
        let good = Signer::hmac(Algorithm::HS256, DEV_SECRET.as_bytes())
            .with_issuer_audience(Some("chat".into()), Some("clients".into()));
        assert!(v
            .verify(&good.token("a", Duration::from_secs(60), None))
            .is_ok());
        let wrong = Signer::hmac(Algorithm::HS256, DEV_SECRET.as_bytes())
            .with_issuer_audience(Some("evil".into()), Some("clients".into()));
        assert!(v
            .verify(&wrong.token("a", Duration::from_secs(60), None))
            .is_err());
        let none = Signer::hmac(Algorithm::HS256, DEV_SECRET.as_bytes());
        assert!(v
            .verify(&none.token("a", Duration::from_secs(60), None))
            .is_err());
    }

    #[test]
    fn key_configuration_errors() {
        let mut st = settings();
        st.key = KeySource::Secret(b"short".to_vec());
        assert!(matches!(Verifier::new(&st), Err(KeyError::ShortSecret)));
        st.algorithm = Algorithm::RS256;
        assert!(matches!(
            Verifier::new(&st),
            Err(KeyError::MissingPublicKey { .. })
        ));
        st.key = KeySource::PublicKeyFile("/nonexistent/key.pem".into());
        assert!(matches!(Verifier::new(&st), Err(KeyError::Read { .. })));
        assert!(matches!(
            parse_algorithm("none"),
            Err(KeyError::Algorithm(_))
        ));
    }

    #[test]
    fn token_sources() {
        assert_eq!(
            token_from_request(Some("Bearer abc"), None).as_deref(),
            Some("abc")
        );
        assert_eq!(
            token_from_request(Some("bearer  abc "), None).as_deref(),
            Some("abc")
        );
        assert_eq!(
            token_from_request(None, Some("encoding=json&access_token=a%2Eb")).as_deref(),
            Some("a.b")
        );
        assert_eq!(token_from_request(Some("Basic x"), None), None);
        assert_eq!(token_from_request(None, Some("x=%")).as_deref(), None);
        assert_eq!(query_param("a=%zz", "a").as_deref(), Some("%zz"));
    }

    #[test]
    fn query_params_are_form_urlencoded() {
        // Names are decoded like values, so an escaped name still matches.
        assert_eq!(
            token_from_request(None, Some("access%5Ftoken=a.b")).as_deref(),
            Some("a.b")
        );
        assert_eq!(query_param("x=1&&a=b+c%20d", "a").as_deref(), Some("b c d"));
        assert_eq!(query_param("a&a=2", "a").as_deref(), Some(""));
        assert_eq!(
            query_param("a=%C3%A9%FF", "a").as_deref(),
            Some("é\u{FFFD}")
        );
        assert_eq!(query_param("a=1", "b"), None);
        assert_eq!(query_param("", "a"), None);
    }
}
