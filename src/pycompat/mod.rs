//! What we must compute exactly as CPython does, for lm-eval's semantics: `ast.literal_eval`,
//! `repr()` and the `str` predicates ([`literal`]), `random.Random` bit for bit ([`random`]),
//! the `re` patterns and `re.sub` that tasks use ([`re`]), and the `str` methods and number
//! parsing of task templates ([`str`]).

pub mod literal;
pub mod random;
pub mod re;
pub mod str;
