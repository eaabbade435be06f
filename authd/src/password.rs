//! argon2id password hashes stored as PHC strings. Verification runs only in
//! the daemon; the dialog process never sees a hash.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::error::{Error, Result};

/// OWASP's recommended argon2id parameters: m=19 MiB, t=2, p=1.
pub fn owasp_params() -> Params {
    Params::new(19 * 1024, 2, 1, None).expect("constant argon2 parameters are valid")
}

/// Hashes a password with a fresh random salt into a PHC string.
pub fn hash(password: &[u8]) -> Result<String> {
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, owasp_params());
    argon
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|e| Error::Hash(e.to_string()))
}

/// Checks a password against a stored PHC string. The parameters come from
/// the PHC string itself, so older hashes keep verifying after a cost change.
pub fn verify(password: &[u8], phc: &str) -> Result<bool> {
    let parsed = PasswordHash::new(phc).map_err(|e| Error::Hash(e.to_string()))?;
    match Argon2::default().verify_password(password, &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::PasswordInvalid) => Ok(false),
        Err(e) => Err(Error::Hash(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let phc = hash(b"correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify(b"correct horse", &phc).unwrap());
        assert!(!verify(b"correct hors", &phc).unwrap());
        // Fresh salt each time.
        assert_ne!(phc, hash(b"correct horse").unwrap());
        assert!(verify(b"x", "not a phc string").is_err());
    }
}
