//! Reading one manifest file of `--source file:DIR`, within bounds: at most
//! [`MAX_MANIFEST_BYTES`] read, never a blocking open (a FIFO named `x.yaml`), flow collections
//! nested at most [`MAX_FLOW_DEPTH`] deep, and YAML expanded to at most [`MAX_YAML_NODES`] nodes
//! and [`MAX_YAML_SCALAR_BYTES`] of text, aliases counted each time they are used, so an alias
//! bomb fails like any other broken file.
use std::{
    cell::Cell,
    fmt,
    io::Read as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::Service;
use serde::de::{self, DeserializeSeed, Visitor};
use serde_yaml::{
    Mapping, Value,
    value::{Tag, TaggedValue},
};
use tracing::warn;

use super::{
    limits::{
        MAX_FLOW_DEPTH, MAX_MANIFEST_BYTES, MAX_YAML_NODES, MAX_YAML_SCALAR_BYTES, flow_depth,
    },
    model::{NodeSpec, ServiceSpec, SliceSpec, slice_over_limits},
    objects::EndpointSlice,
};
use crate::crd::L3lbIPPool;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{file}: reading: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not a regular file")]
    NotAFile { file: PathBuf },
    #[error("{file}: {len} bytes or more, over the limit of {MAX_MANIFEST_BYTES} bytes")]
    TooLarge { file: PathBuf, len: u64 },
    #[error("{file}: not UTF-8 (first invalid byte at offset {offset})")]
    NotUtf8 { file: PathBuf, offset: usize },
    #[error(
        "{file}: flow collections nested {depth} deep, over the limit of {MAX_FLOW_DEPTH}; not parsed"
    )]
    TooDeep { file: PathBuf, depth: usize },
    #[error("{file}: document {document}: {source}")]
    Parse {
        file: PathBuf,
        document: usize,
        #[source]
        source: serde_yaml::Error,
    },
}

/// The objects parsed out of one file.
#[derive(Clone, Debug, Default)]
pub(super) struct Parsed {
    pub services: Vec<ServiceSpec>,
    pub slices: Vec<SliceSpec>,
    /// The Services as written, for the allocator (which needs labels and annotations the slim
    /// model drops).
    pub objects: Vec<Service>,
    pub pools: Vec<L3lbIPPool>,
    /// This node's `kind: Node` manifest, for maintenance (the exclusion label, a cordon).
    pub node: Option<NodeSpec>,
}

pub(super) fn parse_file(path: &Path, node: &str) -> Result<Parsed, ManifestError> {
    let text = read_bounded(path)?;
    let depth = flow_depth(&text);
    if depth > MAX_FLOW_DEPTH {
        return Err(ManifestError::TooDeep {
            file: path.to_owned(),
            depth,
        });
    }
    parse_manifests(&text, node, path).map_err(|(document, source)| ManifestError::Parse {
        file: path.to_owned(),
        document,
        source,
    })
}

/// The file's text. The open does not block (a FIFO would, forever), the type is checked on the
/// opened file (the path may have changed since it was listed) and no more than the limit is
/// read, however large the file is or grows.
fn read_bounded(path: &Path) -> Result<String, ManifestError> {
    let read_error = |source| ManifestError::Read {
        file: path.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read_error)?;
    let metadata = file.metadata().map_err(read_error)?;
    if !metadata.is_file() {
        return Err(ManifestError::NotAFile {
            file: path.to_owned(),
        });
    }
    let too_large = |len| ManifestError::TooLarge {
        file: path.to_owned(),
        len,
    };
    if metadata.len() > MAX_MANIFEST_BYTES {
        return Err(too_large(metadata.len()));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|err| ManifestError::NotUtf8 {
        file: path.to_owned(),
        offset: err.utf8_error().valid_up_to(),
    })
}

/// Parses a multi-document YAML (or JSON) text. Objects of other kinds are ignored; objects
/// without a namespace land in `default`, as `kubectl apply` would put them.
pub(super) fn parse_manifests(
    text: &str,
    node: &str,
    file: &Path,
) -> Result<Parsed, (usize, serde_yaml::Error)> {
    let mut parsed = Parsed::default();
    let budget = Budget::default();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Bounded(&budget)
            .deserialize(document)
            .map_err(|err| (index + 1, err))?;
        collect(value, node, file, &mut parsed).map_err(|err| (index + 1, err))?;
    }
    Ok(parsed)
}

fn collect(
    value: Value,
    node: &str,
    file: &Path,
    parsed: &mut Parsed,
) -> Result<(), serde_yaml::Error> {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default();
    match kind {
        "Service" => {
            let mut service: Service = serde_yaml::from_value(value)?;
            service
                .metadata
                .namespace
                .get_or_insert_with(|| "default".into());
            parsed.services.extend(ServiceSpec::from_service(&service));
            parsed.objects.push(service);
        }
        "L3lbIPPool" => parsed.pools.push(serde_yaml::from_value(value)?),
        "Node" => {
            let spec = NodeSpec::from_node(&serde_yaml::from_value(value)?);
            if let Some(spec) = spec.filter(|spec| spec.name == node) {
                parsed.node = Some(spec);
            }
        }
        "EndpointSlice" => {
            let mut slice: EndpointSlice = serde_yaml::from_value(value)?;
            slice
                .metadata
                .namespace
                .get_or_insert_with(|| "default".into());
            // Parsed once per version of the file, so this warns once, not on every scan.
            if let Some(excess) = slice_over_limits(&slice, node) {
                let name = slice.metadata.name.as_deref().unwrap_or_default();
                warn!(file = %file.display(), slice = name, "EndpointSlice over the limits: {excess}");
            }
            parsed.slices.extend(SliceSpec::from_object(&slice, node));
        }
        "List" | "ServiceList" | "EndpointSliceList" | "NodeList" => {
            // Taken, not cloned: a List may be most of the file.
            if let Value::Mapping(mut list) = value
                && let Some(Value::Sequence(items)) = list.remove("items")
            {
                for item in items {
                    collect(item, node, file, parsed)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// What one file has expanded to so far.
#[derive(Default)]
struct Budget {
    nodes: Cell<usize>,
    scalar_bytes: Cell<usize>,
}

impl Budget {
    fn charge<E: de::Error>(&self, scalar_bytes: usize) -> Result<(), E> {
        let nodes = self.nodes.get() + 1;
        let bytes = self.scalar_bytes.get().saturating_add(scalar_bytes);
        if nodes > MAX_YAML_NODES {
            return Err(E::custom(format_args!(
                "more than {MAX_YAML_NODES} YAML nodes with aliases expanded (the per-file limit)"
            )));
        }
        if bytes > MAX_YAML_SCALAR_BYTES {
            return Err(E::custom(format_args!(
                "more than {MAX_YAML_SCALAR_BYTES} bytes of YAML text with aliases expanded (the per-file limit)"
            )));
        }
        self.nodes.set(nodes);
        self.scalar_bytes.set(bytes);
        Ok(())
    }
}

/// Deserializes a [`Value`] the way serde_yaml's own impl does, charging every node to the
/// budget as it is built, so the limit stops an expansion before its memory is spent.
#[derive(Clone, Copy)]
struct Bounded<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for Bounded<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Bounded<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        self.0.charge(0)?;
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Value, E> {
        self.0.charge(0)?;
        Ok(Value::Number(i.into()))
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Value, E> {
        self.0.charge(0)?;
        Ok(Value::Number(u.into()))
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Value, E> {
        self.0.charge(0)?;
        Ok(Value::Number(f.into()))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        self.0.charge(s.len())?;
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        self.0.charge(s.len())?;
        Ok(Value::String(s))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.0.charge(0)?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.0.charge(0)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Sequence(items))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.0.charge(0)?;
        let mut mapping = Mapping::new();
        while let Some(key) = map.next_key_seed(self)? {
            // As serde_yaml's own Mapping: a duplicate key is an error, not a silent overwrite.
            if mapping.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate entry with key {}",
                    serde_yaml::to_string(&key).unwrap_or_default().trim_end()
                )));
            }
            let value = map.next_value_seed(self)?;
            mapping.insert(key, value);
        }
        Ok(Value::Mapping(mapping))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (tag, contents): (String, _) = data.variant()?;
        if tag.is_empty() {
            return Err(de::Error::custom("empty YAML tag is not allowed"));
        }
        self.0.charge(tag.len())?;
        let value = de::VariantAccess::newtype_variant_seed(contents, self)?;
        Ok(Value::Tagged(Box::new(TaggedValue {
            tag: Tag::new(tag),
            value,
        })))
    }
}

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;
