//! Cluster sources: where l3lb learns about Services and EndpointSlices. Both sources emit the
//! same [`model::ClusterChange`]s, so everything downstream is the same code path.
pub mod file;
pub mod kube;
pub mod limits;
mod manifest;
pub mod model;
pub mod objects;
