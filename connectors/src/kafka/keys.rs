//! Kafka keys of the records identity resolution and audiences produce: the
//! profile (or identifier) they are about, so a compacted topic keeps the
//! latest state per key and a consumer sees one profile's changes in order.

use weft_dataflows::audience::{Membership, TraitValue};
use weft_dataflows::identity::{AccountRecord, ProfileChangeRecord, ProfileRecord, TraitRecord};

use super::KafkaKey;

fn id(out: &mut Vec<u8>, kind: &str, value: &str) {
    out.extend_from_slice(kind.as_bytes());
    out.push(b':');
    out.extend_from_slice(value.as_bytes());
}

impl KafkaKey for ProfileRecord {
    fn kafka_key(&self, out: &mut Vec<u8>) {
        id(out, &self.identifier.kind, &self.identifier.value)
    }
}

impl KafkaKey for ProfileChangeRecord {
    fn kafka_key(&self, out: &mut Vec<u8>) {
        id(out, &self.from.kind, &self.from.value)
    }
}

impl KafkaKey for TraitRecord {
    fn kafka_key(&self, out: &mut Vec<u8>) {
        id(out, &self.profile.kind, &self.profile.value);
        out.push(b'/');
        out.extend_from_slice(self.key.as_bytes());
    }
}

impl KafkaKey for AccountRecord {
    fn kafka_key(&self, out: &mut Vec<u8>) {
        id(out, &self.profile.kind, &self.profile.value)
    }
}

impl KafkaKey for Membership {
    fn kafka_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.profile.as_bytes());
        out.push(b'/');
        out.extend_from_slice(self.audience.as_bytes());
    }
}

impl KafkaKey for TraitValue {
    fn kafka_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.profile.as_bytes());
        out.push(b'/');
        out.extend_from_slice(self.name.as_bytes());
    }
}
