//! Enums written as fixed strings (a cause, a doctor check, a hook): each
//! variant's string is spelled once, in the enum's declaration, and serde,
//! the screen (`as_str`, `Display`) and parsers (`FromStr`) all use it.

/// Declares `enum Name { Variant = "text", … }` with the derives and docs
/// given, plus `Name::ALL`, `as_str`, `Display`, `FromStr` and serde
/// impls that read and write the texts.
macro_rules! string_ids {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every variant, in declaration order.
            #[allow(dead_code)]
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The text it is written as.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::schema::UnknownId;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::schema::UnknownId {
                        kind: stringify!($name),
                        text: text.to_string(),
                        known: &[$($text,)+],
                    }),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(|_| {
                    serde::de::Error::unknown_variant(&text, &[$($text,)+])
                })
            }
        }
    };
}

/// A text that names no variant of a `string_ids!` enum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownId {
    pub kind: &'static str,
    pub text: String,
    pub known: &'static [&'static str],
}

impl std::fmt::Display for UnknownId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown {} {:?} (known: {})",
            self.kind,
            self.text,
            self.known.join(", ")
        )
    }
}

impl std::error::Error for UnknownId {}

#[cfg(test)]
mod tests {
    use crate::schema::{
        AttachMode, BlindSpotKind, Cause, Check, DropHook, Hook, ReasonSource, Segment, Severity,
    };

    /// Every variant reads back from its own text, through `FromStr` and
    /// through JSON, and is written as exactly that text: two variants
    /// with one text, or serde and `as_str` apart, fail here.
    fn round_trips<T>(all: &[T])
    where
        T: Copy
            + PartialEq
            + std::fmt::Debug
            + std::str::FromStr
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Display,
        <T as std::str::FromStr>::Err: std::fmt::Debug,
    {
        assert!(!all.is_empty());
        for v in all {
            let text = v.to_string();
            assert_eq!(text.parse::<T>().unwrap(), *v, "{text}");
            let json = serde_json::to_string(v).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<T>(&json).unwrap(), *v);
        }
        assert!("no such id".parse::<T>().is_err());
        assert!(serde_json::from_str::<T>("\"no such id\"").is_err());
    }

    #[test]
    fn every_id_round_trips() {
        round_trips(Hook::ALL);
        round_trips(AttachMode::ALL);
        round_trips(BlindSpotKind::ALL);
        round_trips(DropHook::ALL);
        round_trips(ReasonSource::ALL);
        round_trips(Cause::ALL);
        round_trips(Segment::ALL);
        round_trips(Severity::ALL);
        round_trips(Check::ALL);
    }

    #[test]
    fn an_unknown_id_says_what_is_known() {
        let e = "sideways".parse::<Hook>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown Hook \"sideways\" (known: ingress, egress)"
        );
        let e = serde_json::from_str::<Hook>("\"sideways\"").unwrap_err();
        assert!(e.to_string().contains("ingress"), "{e}");
    }
}
