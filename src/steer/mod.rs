//! Steering: plans (CSV files naming SAE latents and coefficients) and, later, splicing them into
//! ONNX graphs.

pub mod locate;
pub mod patch;
pub mod plan;
pub mod splice;

pub use plan::{PlanField, PlanFormat, Pos, RowPositions, SteerAction, SteerRow, SteeringPlan};
