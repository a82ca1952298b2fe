"""What growing while training needs besides the graph and surgery: a spec bound to each group
(``binding``), where and how its activations are measured (``measure``), the auxiliary gradient
(``auxgrad``), and the hooks a wrapped model owns (``hooks``).  Triggers and initializers build on
these; :mod:`archgrow.grower` composes them into ``archgrow.wrap``."""
