//! Images for Gantry: references, the content-addressed store, secure layer
//! unpacking, registry pull and push, and Dockerfile builds.
//!
//! Pure parts (`dockerfile`, `stages`, `types`, `reference`, `digest`) do no I/O; the
//! store owns everything under `<data>/images`; `registry` speaks the OCI
//! distribution protocol through oci-client; `build` runs RUN steps in
//! containers of the native runtime.

pub mod build;
pub mod container;
pub mod digest;
pub mod dockerfile;
mod fetch;
pub mod job;
pub mod pack;
pub mod reference;
pub mod registry;
mod remote;
pub mod stages;
pub mod store;
pub mod types;
pub mod unpack;

pub use digest::Digest;
pub use fetch::{arriving, Arrived, Arriving};
pub use reference::{BadReference, ImageRef};
pub use registry::{pull, push, Progress, ProgressFn, RegistryError, RegistryOptions, Tunnel};
pub use store::{ImageRecord, LocalImage, Store, StoreError};

/// Installs rustls' ring provider as the process default once; reqwest and
/// oci-client are built without a provider of their own.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
