//! What an SAE's `prepend_bos` means for the model it steers. The SAE was trained on the
//! activations of text that started with BOS (or did not); a steering vector is added whatever
//! the tokens, so `patch` does not change, but `eval` and `generate` then run the model on
//! tokens its tokenizer makes, and where those start differently from the SAE's training text
//! the activations there (and the attention every later position pays to the first one) are not
//! the ones the SAE's latents were read from. `patch` says so rather than ignore it.

use anyhow::Result;

use crate::sae::SaeProvenance;
use crate::tokenizer::Tokenizer;

/// How the model's tokenizer starts a text.
pub(super) struct TokenizerStart {
    /// Encoding with special tokens puts BOS first.
    pub adds_bos: bool,
    /// The BOS token's text, if the tokenizer has one.
    pub bos: Option<String>,
}

impl TokenizerStart {
    pub fn of(tokenizer: &Tokenizer) -> Result<Self> {
        let bos = tokenizer
            .bos_token_id()?
            .and_then(|id| tokenizer.decode_token(id));
        Ok(Self {
            adds_bos: tokenizer.adds_bos()?,
            bos,
        })
    }
}

/// One warning for each SAE whose `prepend_bos` disagrees with the tokenizer, or that cannot be
/// compared; `tokenizer` is opened only if some SAE states `prepend_bos`.
pub(super) fn warnings(
    saes: &[SaeProvenance],
    tokenizer: impl FnOnce() -> Result<TokenizerStart>,
) -> Vec<String> {
    if saes.iter().all(|s| s.prepend_bos.is_none()) {
        return Vec::new();
    }
    let start = tokenizer();
    let mut out: Vec<String> = saes
        .iter()
        .filter_map(|sae| {
            let name = format!("SAE {} {}", sae.source, sae.sae_id);
            warning(&name, sae.prepend_bos?, &start)
        })
        .collect();
    out.dedup();
    out
}

fn warning(sae: &str, prepend_bos: bool, start: &Result<TokenizerStart>) -> Option<String> {
    let start = match start {
        Ok(start) => start,
        Err(e) => {
            return Some(format!(
                "{sae} was trained {} BOS (prepend_bos: {prepend_bos}), and the model's tokenizer could not be \
                 opened to compare ({e:#}); check that eval and generate start text as the SAE's training did",
                if prepend_bos {
                    "on text that starts with"
                } else {
                    "without"
                }
            ));
        }
    };
    match (prepend_bos, start.adds_bos, &start.bos) {
        (true, true, _) | (false, false, _) => None,
        (true, false, Some(bos)) => Some(format!(
            "{sae} was trained on text that starts with BOS (prepend_bos: true), and the model's tokenizer adds \
             none: `generate --prepend-bos` puts {bos:?} first; `eval` tokenizes as lm-eval does, without it \
             (lm-eval's add_bos_token only asks the tokenizer for its special tokens, and this one adds no BOS), \
             so there the activations differ \
             from the SAE's training data"
        )),
        (true, false, None) => Some(format!(
            "{sae} was trained on text that starts with BOS (prepend_bos: true), and the model's tokenizer has no \
             BOS token, so eval and generate feed none: the activations differ from the SAE's training data"
        )),
        (false, true, _) => Some(format!(
            "{sae} was trained on text without BOS (prepend_bos: false), and the model's tokenizer adds one, which \
             eval (as lm-eval does) and generate feed: the activations differ from the SAE's training data"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(adds_bos: bool, bos: Option<&str>) -> Result<TokenizerStart> {
        Ok(TokenizerStart {
            adds_bos,
            bos: bos.map(str::to_owned),
        })
    }

    #[test]
    fn a_tokenizer_that_starts_as_the_sae_was_trained_needs_no_warning() {
        assert_eq!(warning("SAE s", true, &start(true, Some("<bos>"))), None);
        assert_eq!(
            warning("SAE s", false, &start(false, Some("<|endoftext|>"))),
            None
        );
    }

    #[test]
    fn a_tokenizer_without_bos_for_a_prepend_bos_sae_names_the_option() {
        let w = warning("SAE s", true, &start(false, Some("<|endoftext|>"))).unwrap();
        assert!(
            w.starts_with("SAE s was trained on text that starts with BOS"),
            "{w}"
        );
        assert!(
            w.contains("`generate --prepend-bos` puts \"<|endoftext|>\" first"),
            "{w}"
        );
        let w = warning("SAE s", true, &start(false, None)).unwrap();
        assert!(w.contains("has no BOS token"), "{w}");
    }

    #[test]
    fn a_tokenizer_adding_bos_for_an_sae_trained_without_is_a_warning() {
        let w = warning("SAE s", false, &start(true, Some("<bos>"))).unwrap();
        assert!(
            w.contains("trained on text without BOS (prepend_bos: false)"),
            "{w}"
        );
    }

    #[test]
    fn a_tokenizer_that_cannot_be_opened_is_a_warning_not_silence() {
        let w = warning("SAE s", true, &Err(anyhow::anyhow!("no tokenizer.json"))).unwrap();
        assert!(
            w.contains("could not be opened to compare (no tokenizer.json)"),
            "{w}"
        );
    }
}
