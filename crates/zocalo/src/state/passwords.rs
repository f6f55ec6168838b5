//! Password hashes: Argon2id for what zocalo writes (`zocalo user`), and checking the kinds
//! account databases hold, each check within the bound on hashes at once
//! ([`crate::state::hashes`]).

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use zocalo_proto::AuthError;

/// Hashes a password with Argon2id and a random salt, in PHC string form.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// What an unknown user's password is checked against, so that the check takes as long as a
/// known user's (no user enumeration by timing): a fixed hash with [`hash_password`]'s
/// parameters, so nothing is hashed to make it (each of the `process` model's children did).
pub const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$F10srG7+EE4L4leLCQfNdA$To+Z44bt3+RBqEO3PCfKe1N/PP39DFMALyhUkVtW0aQ";

pub fn verify(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

/// [`verify`] within the bound on hashes at once ([`crate::state::hashes`]).
pub fn verify_bounded(hash: &str, password: &str) -> Result<bool, AuthError> {
    let _permit = crate::state::hashes::acquire().ok_or(AuthError::Unavailable)?;
    Ok(verify(hash, password))
}

/// Checks `password` against a stored hash of a kind account databases hold: Argon2 (a PHC
/// string), SHA-512 crypt (`$6$`) or bcrypt (`$2a$`, `$2b$`, `$2y$`), within the bound on hashes
/// at once. Weaker kinds (DES, MD5 crypt) and plain text are refused, as an error for the log.
pub fn check_password(hash: &str, password: &str) -> Result<bool, String> {
    let _permit = crate::state::hashes::acquire().ok_or("too busy to check a password now")?;
    matches_hash(hash, password)
}

/// [`check_password`] without the bound.
fn matches_hash(hash: &str, password: &str) -> Result<bool, String> {
    if hash.starts_with("$argon2") {
        return Ok(verify(hash, password));
    }
    if hash.starts_with("$6$") {
        return Ok(pwhash::sha512_crypt::verify(password, hash));
    }
    if ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
        return Ok(pwhash::bcrypt::verify(password, hash));
    }
    Err("the stored password is not an Argon2, $6$ or $2b$ hash".into())
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crypt_hashes_of_existing_schemas() {
        // `openssl passwd -6 -salt saltsalt pw` and Python's bcrypt.hashpw(b"pw", gensalt(4)).
        let sha512 = "$6$saltsalt$pauPrmdmG4BTE9h2HPmywiw152IFch6BJCEsaY6D.PLTfpV8sqvXwWdyfsgVgozkYH9B80bAip/08R2BPH2xk/";
        assert_eq!(matches_hash(sha512, "pw"), Ok(true));
        assert_eq!(matches_hash(sha512, "no"), Ok(false));
        let bcrypt = "$2b$04$iJg7v1W3plxc3aK8A3DTO.4x3vEnXQwdspJ5oYHa26woL9ebInSLy";
        assert_eq!(matches_hash(bcrypt, "pw"), Ok(true));
        assert_eq!(matches_hash(bcrypt, "no"), Ok(false));
        assert!(matches_hash(&hash_password("pw").unwrap(), "pw").unwrap());
        assert!(matches_hash("pw", "pw").is_err(), "plain text is never a hash");
        assert!(matches_hash("$1$salt$hash", "pw").is_err(), "MD5 crypt is refused");
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
