"""Chain declarations: validation (one clear error naming the key) and the topological training order."""

from __future__ import annotations

import pytest

from multistage.chains import ChainError, chain_from_mapping, validate_chain

PENDULUM_VARIABLES = ("length", "damping", "mass", "initial_angle", "y0", "y1", "theta")


def pendulum_nodes() -> dict:
    """MS-VAE appendix C's three sub-graphs, declared in reverse of the order they must be trained in."""
    return {
        "residual": {"kind": "residual_vae", "inputs": ["y1"], "output": "theta", "options": {"latent_dim": 1}},
        "damping_to_y1": {"kind": "gaussian_mlp", "inputs": ["damping", "y0"], "output": "y1"},
        "length_to_y0": {"kind": "gaussian_mlp", "inputs": ["length"], "output": "y0"},
    }


def order(nodes: dict, variables=PENDULUM_VARIABLES) -> list[str]:
    return [node.name for node in validate_chain(chain_from_mapping("test", nodes), variables)]


def error_of(nodes: dict, variables=PENDULUM_VARIABLES) -> ChainError:
    with pytest.raises(ChainError) as caught:
        validate_chain(chain_from_mapping("test", nodes), variables)
    return caught.value


def test_pendulum_is_ordered_by_its_edges_not_its_declaration():
    assert order(pendulum_nodes()) == ["length_to_y0", "damping_to_y1", "residual"]


def test_independent_nodes_keep_the_declaration_order_and_a_diamond_is_ordered():
    def node(inputs, output):
        return {"kind": "gaussian_mlp", "inputs": inputs, "output": output}

    # a -> (c, b) -> d, declared d, c, b, a: ties between b and c are broken by declaration order
    nodes = {"d": node(["vb", "vc"], "vd"), "c": node(["va"], "vc"), "b": node(["va"], "vb"), "a": node(["r"], "va")}
    assert order(nodes, ["r", "va", "vb", "vc", "vd"]) == ["a", "c", "b", "d"]
    assert order({"x": node(["r"], "vx"), "y": node(["r"], "vy")}, ["r", "vx", "vy"]) == ["x", "y"]


def test_a_cycle_is_one_error_that_lists_it():
    nodes = pendulum_nodes()
    nodes["length_to_y0"]["inputs"] = ["length", "theta"]
    error = error_of(nodes)
    assert error.key.startswith("nodes.") and error.key.endswith(".inputs")
    path = error.message.removeprefix("cycle: ").split(" -> ")
    assert path[0] == path[-1] and set(path) == {"length_to_y0", "damping_to_y1", "residual"}
    # each step of the printed cycle is a real edge: the first node's output is an input of the next
    outputs = {name: spec["output"] for name, spec in nodes.items()}
    assert all(outputs[a] in nodes[b]["inputs"] for a, b in zip(path, path[1:]))


def test_a_node_reading_its_own_output_is_a_cycle():
    nodes = pendulum_nodes()
    nodes["damping_to_y1"]["inputs"] = ["damping", "y1"]
    error = error_of(nodes)
    assert error.key == "nodes.damping_to_y1.inputs" and "cycle" in error.message


def test_an_unknown_input_is_named_with_what_exists():
    nodes = pendulum_nodes()
    nodes["residual"]["inputs"] = ["y2"]
    error = error_of(nodes)
    assert error.key == "nodes.residual.inputs"
    assert (
        "unknown input 'y2'" in error.message and "length, damping, mass, initial_angle, y0, y1, theta" in error.message
    )


def test_a_missing_output_a_variable_made_twice_a_bad_kind_and_bad_options():
    nodes = pendulum_nodes()
    nodes["residual"]["output"] = "phi"  # a conditional model needs its output observed to train on
    assert (error_of(nodes).key, "missing output 'phi'" in error_of(nodes).message) == ("nodes.residual.output", True)

    nodes = pendulum_nodes()
    nodes["damping_to_y1"]["output"] = "y0"
    error = error_of(nodes)
    assert error.key == "nodes.length_to_y0.output" and "already produced by node 'damping_to_y1'" in error.message

    nodes = pendulum_nodes()
    nodes["residual"]["kind"] = "vae"
    error = error_of(nodes)
    assert error.key == "nodes.residual.kind" and "gaussian_mlp, residual_vae, stage_one, stage_two" in error.message

    nodes = pendulum_nodes()
    nodes["residual"]["options"] = {"latent_dim": 0}
    assert error_of(nodes).key == "nodes.residual.options.latent_dim"
    nodes["residual"]["options"] = {"betta": 2.0}
    error = error_of(nodes)
    assert (
        error.key == "nodes.residual.options.betta"
        and "allowed options: hidden, activation" in error.message
        and "latent_dim, beta" in error.message
    )
    nodes["residual"]["options"] = {"hidden": "256"}
    assert error_of(nodes).key == "nodes.residual.options.hidden"


def test_declaration_shape_errors_name_the_node():
    with pytest.raises(ChainError, match=r"^nodes: a chain needs at least one node"):
        chain_from_mapping("test", {})
    with pytest.raises(ChainError) as caught:
        chain_from_mapping("test", {"a": {"kind": "gaussian_mlp", "inputs": ["r"]}})
    assert caught.value.key == "nodes.a.output"
    with pytest.raises(ChainError) as caught:
        chain_from_mapping("test", {"a": {"kind": "gaussian_mlp", "output": "v", "outputs": "w"}})
    assert caught.value.key == "nodes.a.outputs"


def test_registry_wrappers_check_their_arity_and_model_options():
    image = {
        "stage_one": {"kind": "stage_one", "output": "y", "options": {"model": "betavae", "observed": "x"}},
        "stage_two": {"kind": "stage_two", "inputs": ["y"], "output": "x", "options": {"model": "msvae"}},
    }
    assert order(image, ["x"]) == ["stage_one", "stage_two"]
    bad = {**image, "stage_one": {**image["stage_one"], "inputs": ["x"]}}
    assert error_of(bad, ["x"]).key == "nodes.stage_one.inputs"
    bad = {**image, "stage_one": {**image["stage_one"], "options": {"model": "betavae", "observed": "pixels"}}}
    assert error_of(bad, ["x"]).key == "nodes.stage_one.options.observed"
    bad = {**image, "stage_two": {**image["stage_two"], "options": {"model": "msvae", "gamma": 3}}}
    error = error_of(bad, ["x"])
    assert error.key == "nodes.stage_two.options.gamma" and "residual_dim" in error.message
    bad = {**image, "stage_two": {**image["stage_two"], "options": {"model": "nope"}}}
    assert error_of(bad, ["x"]).key == "nodes.stage_two.options.model"
