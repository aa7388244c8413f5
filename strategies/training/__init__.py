"""The training half of `strategies`: one ``fit`` on any ``tf.distribute.Strategy``.

`_fit.fit` checks its arguments, builds the model in the strategy's scope and
hands the run to two collaborators:

* a trainer (`_trainers`): the Keras loop (``model.fit`` with the
  `strategies.compat` fixes this strategy needs) or the parameter-server loop
  (`_ps_training`), behind one interface;
* the run directory (`_run_directory`): checkpoints (`_checkpointing`),
  exact resumption (`_resume`, `_plan`), preemption (`_preemption`),
  TensorBoard logs, ``model.keras`` and ``summary.json``.

Its one input from `strategies.building` is the strategy object (`_roles`
reads what kind it is and which task this process is). The public names are
re-exported by `strategies`.
"""
