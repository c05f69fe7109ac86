//! Reading one `[sinks.NAME]` table into a settings type that does not know the `type` key
//! (which chose it), with figment's error paths kept as the user wrote the key.

use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, IgnoredAny, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// `T` from a table, its `type` entry skipped.
pub(crate) struct WithoutType<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for WithoutType<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Table<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Table<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(SkipType(map)))
            }
        }
        deserializer
            .deserialize_map(Table(PhantomData))
            .map(WithoutType)
    }
}

struct SkipType<A>(A);

impl<'de, A: MapAccess<'de>> MapAccess<'de> for SkipType<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        while let Some(key) = self.0.next_key::<String>()? {
            if key == "type" {
                self.0.next_value::<IgnoredAny>()?;
                continue;
            }
            return seed.deserialize(key.into_deserializer()).map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.0.next_value_seed(seed)
    }
}

/// Errors of `extract_inner(root)` with their paths put right: figment appends `root` after
/// the path inside it (`linger_ms.sinks.kafka`); this puts it first (`sinks.kafka.linger_ms`).
pub(crate) fn rooted(error: figment::Error, root: &str) -> figment::Error {
    let root: Vec<String> = root.split('.').map(str::to_owned).collect();
    let mut fixed: Option<figment::Error> = None;
    let errors: Vec<figment::Error> = error.into_iter().collect();
    for mut e in errors.into_iter().rev() {
        if e.path.ends_with(&root) {
            let inner = e.path.len() - root.len();
            e.path.truncate(inner);
            let mut path = root.clone();
            path.append(&mut e.path);
            e.path = path;
        }
        fixed = Some(match fixed {
            None => e,
            Some(prev) => prev.chain(e),
        });
    }
    fixed.unwrap_or_else(|| figment::Error::from(String::from("invalid sink settings")))
}
