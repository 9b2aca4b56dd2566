"""How `CustomOptimizer` schedules its per-variable updates (private).

Which variables run op by op and which go through compiled calls, in which
buckets; and the dense gradient the compiled calls take.
"""

import tensorflow as tf


def plan_updates(sizes, op_by_op_below, bucket_elements):
    """Splits variables into groups: `[(compiled, indices), ...]`.

    Variables of fewer than `op_by_op_below` elements form one op-by-op
    group; the others form compiled buckets of at least `bucket_elements`
    elements (the last one may be smaller), taken from the last variable
    backwards: its gradient is ready first.
    """
    small = [i for i, n in enumerate(sizes) if n < op_by_op_below]
    plan = [(False, small)] if small else []
    bucket, elements = [], 0
    for i in reversed(range(len(sizes))):
        if sizes[i] < op_by_op_below:
            continue
        bucket.append(i)
        elements += sizes[i]
        if elements >= bucket_elements:
            plan.append((True, bucket))
            bucket, elements = [], 0
    if bucket:
        plan.append((True, bucket))
    return plan


def densify(gradient, variable):
    """Sums an `IndexedSlices` gradient into a dense, static-shape tensor."""
    num_rows = variable.shape[0]
    dense = tf.math.unsorted_segment_sum(
        gradient.values, gradient.indices, num_segments=num_rows
    )
    return tf.reshape(dense, variable.shape)
