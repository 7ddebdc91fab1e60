//! HTTP Basic credentials checked against PHC password hashes (argon2id or
//! pbkdf2-sha256). The slow hash runs once per distinct credential per VM;
//! after that a SHA-256 digest of the verified pair is compared in constant time.

use std::{cell::RefCell, collections::VecDeque};

use argon2::{password_hash::PasswordHash, Argon2, PasswordVerifier};
use base64::Engine;
use pbkdf2::Pbkdf2;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Most verified credentials remembered per VM.
pub const CACHE_CAPACITY: usize = 64;
/// Longest `Authorization` header considered.
pub const MAX_AUTHORIZATION_BYTES: usize = 1024;

/// A configured user: name and PHC hash.
#[derive(Clone)]
pub struct Credential {
    username: String,
    phc: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Why a password hash is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialError {
    /// Not a PHC string.
    NotPhc(String),
    /// A PHC string of an algorithm we do not accept.
    Algorithm(String),
}

impl Credential {
    /// Checks that `phc` is an argon2id or pbkdf2-sha256 PHC string.
    pub fn new(username: String, phc: &str) -> Result<Self, CredentialError> {
        let parsed = PasswordHash::new(phc).map_err(|err| {
            CredentialError::NotPhc(format!(
                "not a PHC hash string ({err}); make one with `aljex-sink hash-password`"
            ))
        })?;
        match parsed.algorithm.as_str() {
            "argon2id" => {
                argon2::Params::try_from(&parsed).map_err(|err| {
                    CredentialError::NotPhc(format!("bad argon2id parameters: {err}"))
                })?;
            }
            "pbkdf2-sha256" => {}
            other => {
                return Err(CredentialError::Algorithm(format!(
                    "algorithm {other:?} is not accepted (use argon2id or pbkdf2-sha256)"
                )))
            }
        }
        if parsed.hash.is_none() {
            return Err(CredentialError::NotPhc(
                "the PHC string has no hash".to_string(),
            ));
        }
        Ok(Credential {
            username,
            phc: phc.to_string(),
        })
    }

    /// The user name.
    pub fn username(&self) -> &str {
        &self.username
    }

    fn verify_slow(&self, password: &[u8]) -> bool {
        let Ok(parsed) = PasswordHash::new(&self.phc) else {
            return false;
        };
        match parsed.algorithm.as_str() {
            "argon2id" => Argon2::default().verify_password(password, &parsed).is_ok(),
            _ => Pbkdf2.verify_password(password, &parsed).is_ok(),
        }
    }

    fn digest(&self, username: &[u8], password: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.phc.as_bytes());
        hasher.update([0]);
        hasher.update(username);
        hasher.update([0]);
        hasher.update(password);
        hasher.finalize().into()
    }
}

/// Outcome of checking an `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Valid credentials of this user.
    Accepted(String),
    /// No `Authorization` header.
    Missing,
    /// Not `Basic base64(user:password)`.
    Malformed,
    /// Unknown user or wrong password.
    Wrong,
}

impl AuthOutcome {
    /// Short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            AuthOutcome::Accepted(_) => "accepted",
            AuthOutcome::Missing => "missing",
            AuthOutcome::Malformed => "malformed",
            AuthOutcome::Wrong => "wrong",
        }
    }
}

/// The configured users plus the per-VM cache of verified credentials.
#[derive(Debug)]
pub struct Authenticator {
    credentials: Vec<Credential>,
    verified: RefCell<VecDeque<[u8; 32]>>,
}

impl Authenticator {
    /// An authenticator for these users (at least one).
    pub fn new(credentials: Vec<Credential>) -> Self {
        Authenticator {
            credentials,
            verified: RefCell::new(VecDeque::with_capacity(CACHE_CAPACITY)),
        }
    }

    /// Checks an `Authorization` header value.
    pub fn check(&self, authorization: Option<&str>) -> AuthOutcome {
        let Some(header) = authorization else {
            return AuthOutcome::Missing;
        };
        let Some((username, password)) = parse_basic(header) else {
            return AuthOutcome::Malformed;
        };
        // Pick the credential without an early exit; an unknown user still pays
        // for one verification so timing does not reveal which names exist.
        let mut found: Option<&Credential> = None;
        for credential in &self.credentials {
            let same = credential.username.as_bytes().ct_eq(&username);
            if bool::from(same) {
                found = Some(credential);
            }
        }
        let Some(candidate) = found.or(self.credentials.first()) else {
            return AuthOutcome::Wrong;
        };
        let digest = candidate.digest(&username, &password);
        let cached = {
            let verified = self.verified.borrow();
            verified.iter().fold(subtle::Choice::from(0), |hit, known| {
                hit | known.ct_eq(&digest)
            })
        };
        let valid = bool::from(cached) || {
            let ok = candidate.verify_slow(&password);
            if ok && found.is_some() {
                let mut verified = self.verified.borrow_mut();
                if verified.len() == CACHE_CAPACITY {
                    verified.pop_front();
                }
                verified.push_back(digest);
            }
            ok
        };
        match found {
            Some(credential) if valid => AuthOutcome::Accepted(credential.username.clone()),
            _ => AuthOutcome::Wrong,
        }
    }

    /// How many verified credentials are remembered.
    pub fn cached(&self) -> usize {
        self.verified.borrow().len()
    }
}

/// `Basic base64(user:password)` to its parts.
fn parse_basic(header: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    if header.len() > MAX_AUTHORIZATION_BYTES {
        return None;
    }
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let (username, rest) = decoded.split_at(colon);
    let password = rest.get(1..)?.to_vec();
    Some((username.to_vec(), password))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, SaltString};

    /// A fast argon2id hash for tests.
    pub fn argon2_hash(password: &str) -> String {
        let params = argon2::Params::new(1024, 1, 1, None).unwrap();
        let argon = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = SaltString::encode_b64(b"fixed-test-salt!").unwrap();
        argon
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    fn pbkdf2_hash(password: &str) -> String {
        let salt = SaltString::encode_b64(b"fixed-test-salt!").unwrap();
        let params = pbkdf2::Params {
            rounds: 1000,
            output_length: 32,
        };
        Pbkdf2
            .hash_password_customized(
                password.as_bytes(),
                Some(pbkdf2::Algorithm::Pbkdf2Sha256.ident()),
                None,
                params,
                &salt,
            )
            .unwrap()
            .to_string()
    }

    fn basic(user: &str, password: &str) -> String {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}")
    }

    fn authenticator() -> Authenticator {
        Authenticator::new(vec![
            Credential::new("aljex".into(), &argon2_hash("s3cret:with:colons")).unwrap(),
            Credential::new("backup".into(), &pbkdf2_hash("other")).unwrap(),
        ])
    }

    #[test]
    fn accepts_argon2id_and_pbkdf2() {
        let auth = authenticator();
        assert_eq!(
            auth.check(Some(&basic("aljex", "s3cret:with:colons"))),
            AuthOutcome::Accepted("aljex".into())
        );
        assert_eq!(
            auth.check(Some(&basic("backup", "other"))),
            AuthOutcome::Accepted("backup".into())
        );
        assert_eq!(
            auth.check(Some(&format!("basic  {}", &basic("backup", "other")[6..]))),
            AuthOutcome::Accepted("backup".into())
        );
    }

    #[test]
    fn refuses_wrong_missing_malformed() {
        let auth = authenticator();
        assert_eq!(auth.check(None), AuthOutcome::Missing);
        assert_eq!(auth.check(Some("Bearer abc")), AuthOutcome::Malformed);
        assert_eq!(auth.check(Some("Basic !!!")), AuthOutcome::Malformed);
        assert_eq!(
            auth.check(Some("Basic bm9jb2xvbg==")),
            AuthOutcome::Malformed
        ); // "nocolon"
        assert_eq!(auth.check(Some(&"x".repeat(2000))), AuthOutcome::Malformed);
        assert_eq!(
            auth.check(Some(&basic("aljex", "wrong"))),
            AuthOutcome::Wrong
        );
        assert_eq!(
            auth.check(Some(&basic("nobody", "s3cret:with:colons"))),
            AuthOutcome::Wrong
        );
        assert_eq!(
            auth.check(Some(&basic("backup", "s3cret:with:colons"))),
            AuthOutcome::Wrong
        );
        assert_eq!(
            auth.check(Some(&basic("ALJEX", "s3cret:with:colons"))),
            AuthOutcome::Wrong
        );
    }

    #[test]
    fn remembers_only_verified_credentials_bounded() {
        let auth = authenticator();
        auth.check(Some(&basic("aljex", "wrong")));
        assert_eq!(auth.cached(), 0);
        auth.check(Some(&basic("aljex", "s3cret:with:colons")));
        auth.check(Some(&basic("aljex", "s3cret:with:colons")));
        assert_eq!(auth.cached(), 1);
        // A cached digest for one user does not let another password in.
        assert_eq!(
            auth.check(Some(&basic("aljex", "s3cret:with:colonz"))),
            AuthOutcome::Wrong
        );
        for _ in 0..(CACHE_CAPACITY * 2) {
            auth.check(Some(&basic("backup", "other")));
        }
        assert!(auth.cached() <= CACHE_CAPACITY);
    }

    #[test]
    fn refuses_other_algorithms_and_plain_text() {
        assert!(matches!(
            Credential::new("a".into(), "secret"),
            Err(CredentialError::NotPhc(_))
        ));
        let argon2i = argon2_hash("x").replace("$argon2id$", "$argon2i$");
        assert!(matches!(
            Credential::new("a".into(), &argon2i),
            Err(CredentialError::Algorithm(_))
        ));
        let debug = format!(
            "{:?}",
            Credential::new("a".into(), &argon2_hash("x")).unwrap()
        );
        assert!(!debug.contains("argon2id"), "{debug}");
    }
}
