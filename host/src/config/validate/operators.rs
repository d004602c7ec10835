//! `[[pipelines.<name>.operators]]`: the operator chain, each a use of a defined function under a
//! name of its own in the pipeline (its state namespace; default: the function id).

use std::collections::{BTreeMap, BTreeSet};

use toml::Spanned;

use super::Validator;
use crate::config::raw::RawOperator;
use crate::config::{FunctionConfig, FunctionId, Name, OperatorConfig};

impl Validator<'_> {
    /// The operators of `pipeline` that name a defined function, in order; `field` is
    /// `pipelines.<name>.operators`.
    pub(super) fn operators(
        &mut self,
        pipeline: &Name,
        raw: Vec<Spanned<RawOperator>>,
        field: &str,
        functions: &BTreeMap<FunctionId, FunctionConfig>,
    ) -> Vec<OperatorConfig> {
        let mut operators = Vec::new();
        let mut names = BTreeSet::new();
        for (index, operator) in raw.into_iter().enumerate() {
            let operator = operator.into_inner();
            let field = format!("{field}[{index}]");
            let known = self.function_ref(&operator.function, &format!("{field}.function"), functions);
            let name = match &operator.name {
                Some(name) => name.get_ref().clone(),
                None => Name::try_from(operator.function.get_ref().as_str().to_owned())
                    .expect("function ids and names share one syntax"),
            };
            if !names.insert(name.clone()) {
                let span = operator.name.as_ref().map_or(operator.function.span(), Spanned::span);
                self.problem(
                    Some(span),
                    field.clone(),
                    format!(
                        "operator name {:?} is used twice in this pipeline; give each use its own `name`",
                        name.as_str()
                    ),
                );
            }
            if known {
                operators.push(self.function_use(pipeline, name, field, &operator.function, operator.params.as_ref()));
            }
        }
        operators
    }
}
