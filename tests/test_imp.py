def test_x():
    import leaf.hooks, leaf.serve
