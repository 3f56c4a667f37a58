//! Steering: plans (CSV files naming SAE latents, coefficients and actions), splicing them into
//! ONNX graphs, and the coefficient inputs of sweepable patches.

pub mod locate;
pub mod patch;
pub mod plan;
pub mod splice;
pub mod sweep;

pub use plan::{PlanField, PlanFormat, Pos, RowPositions, SteerAction, SteerRow, SteeringPlan};
pub use sweep::{COEFFICIENT_INPUTS, CoefficientInput, coefficient_inputs};
