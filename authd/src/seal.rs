//! The seal: a phrase and a colour the user chose at enrollment. Only the
//! genuine dialog (drawn by the host, outside any VM) knows them, so a
//! look-alike window drawn by a guest cannot show them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// An sRGB colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rgb(pub u8, pub u8, pub u8);

impl Rgb {
    /// `0x00RRGGBB`, the pixel format of the renderer and softbuffer.
    pub fn to_pixel(self) -> u32 {
        (u32::from(self.0) << 16) | (u32::from(self.1) << 8) | u32::from(self.2)
    }

    /// Black or white, whichever reads better on this colour.
    pub fn contrasting(self) -> Rgb {
        let l =
            0.2126 * f32::from(self.0) + 0.7152 * f32::from(self.1) + 0.0722 * f32::from(self.2);
        if l > 140.0 {
            Rgb(0, 0, 0)
        } else {
            Rgb(255, 255, 255)
        }
    }
}

impl fmt::Display for Rgb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{:02x}{:02x}{:02x}", self.0, self.1, self.2)
    }
}

impl FromStr for Rgb {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let hex = s.strip_prefix('#').unwrap_or(s);
        if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidSeal(format!("colour {s:?} is not #rrggbb")));
        }
        let c = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0);
        Ok(Rgb(c(0), c(2), c(4)))
    }
}

impl Serialize for Rgb {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Rgb {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The user's seal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    pub phrase: String,
    pub color: Rgb,
}

impl Seal {
    /// Longest phrase, so it fits the dialog's seal band.
    pub const MAX_PHRASE: usize = 40;

    pub fn new(phrase: &str, color: Rgb) -> Result<Seal, Error> {
        let phrase = phrase.trim();
        if phrase.chars().count() < 3 {
            return Err(Error::InvalidSeal(
                "phrase needs at least 3 characters".into(),
            ));
        }
        if phrase.chars().count() > Self::MAX_PHRASE {
            return Err(Error::InvalidSeal(format!(
                "phrase longer than {} characters",
                Self::MAX_PHRASE
            )));
        }
        if phrase.chars().any(char::is_control) {
            return Err(Error::InvalidSeal("phrase has control characters".into()));
        }
        Ok(Seal {
            phrase: phrase.to_owned(),
            color,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_round_trip_and_validation() {
        let c: Rgb = "#1a2B3c".parse().unwrap();
        assert_eq!(c, Rgb(0x1a, 0x2b, 0x3c));
        assert_eq!(c.to_string(), "#1a2b3c");
        assert!("#12345".parse::<Rgb>().is_err());
        assert!("#12345g".parse::<Rgb>().is_err());
        assert_eq!(Rgb(255, 255, 0).contrasting(), Rgb(0, 0, 0));
        assert_eq!(Rgb(0, 0, 128).contrasting(), Rgb(255, 255, 255));
    }

    #[test]
    fn phrase_rules() {
        assert!(Seal::new("ab", Rgb(0, 0, 0)).is_err());
        assert!(Seal::new("bad\u{7}bell", Rgb(0, 0, 0)).is_err());
        assert_eq!(
            Seal::new("  purple owl ", Rgb(0, 0, 0)).unwrap().phrase,
            "purple owl"
        );
    }
}
