//! What we must compute exactly as CPython does, for lm-eval's semantics: `ast.literal_eval`
//! ([`literal`]), `repr()` ([`repr`]), the `str` predicates on CPython's Unicode tables
//! ([`unicode`]), the `str` methods and number parsing of task templates ([`str`]), the `re`
//! patterns and `re.sub` that tasks use ([`re`]), and `random.Random` bit for bit ([`random`]).

pub mod literal;
pub mod random;
pub mod re;
pub mod repr;
pub mod str;
pub mod unicode;
