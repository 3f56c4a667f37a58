//! What we must compute exactly as CPython does, for lm-eval's semantics: `ast.literal_eval`,
//! `repr()` and the `str` predicates ([`literal`]), and `random.Random` bit for bit ([`random`]).

pub mod literal;
pub mod random;
