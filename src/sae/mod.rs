//! Sparse autoencoders: the release registry and loaders that read only the decoder rows (and
//! encoder parts) of the latents a steering plan names.
//!
//! Formats (DESIGN.md §3, `models/saes/README.md`):
//! - Gemma Scope (Gemma 2): `params.npz`, float32 `W_enc [d_in,d_sae]`, `W_dec [d_sae,d_in]`,
//!   `b_enc`, `b_dec`, `threshold` (JumpReLU, `b_dec` not subtracted from the input).
//! - Gemma Scope 2 (Gemma 3): `params.safetensors` with lowercase `w_enc`, `w_dec`, ...
//! - SAELens folders: `cfg.json` + `sae_weights.safetensors`.
//!
//! Sources: a registry release (`gemma-scope-2b-pt-res-canonical` + id), a Hugging Face repository
//! id (+ the SAE's folder in it), or a local folder. Files come through [`crate::hub::Hub`].
//!
//! `source` finds the files, `config` describes the SAE, `weights` reads a few elements of
//! its weights file, `provenance` records where they came from, and `open` joins them into
//! an [`Sae`] that reads what a plan's latents need.

mod config;
mod open;
mod provenance;
pub mod registry;
mod source;
pub mod weights;

use anyhow::Result;

use crate::hub::Hub;
pub use config::SaeArchitecture;
pub use open::{DecoderRows, EncoderParts, LatentOutOfRange, NonFiniteLatent, Sae};
pub use provenance::{HASH_LIMIT, SaeProvenance};
pub use registry::{Registry, RegistrySae, Release, SaeEntry, registry};
pub use source::SaeSource;
pub use weights::SaeFormat;

/// Reads `W_dec[latent]` for each of `latents` of the SAE `sae_id` of `source`.
pub fn load_decoder_rows(
    hub: &Hub,
    source: &SaeSource,
    sae_id: &str,
    latents: &[usize],
) -> Result<DecoderRows> {
    Sae::open(hub, source, sae_id)?.decoder_rows(latents)
}

/// Reads the encoder column, `b_enc` and `threshold` entries of each of `latents`, and `b_dec`.
pub fn load_encoder_parts(
    hub: &Hub,
    source: &SaeSource,
    sae_id: &str,
    latents: &[usize],
) -> Result<EncoderParts> {
    Sae::open(hub, source, sae_id)?.encoder_parts(latents)
}
