from edgekit.modulenames import in_modules


def test_a_name_is_in_itself_and_its_children_but_not_a_longer_sibling():
    assert in_modules("enc", ["enc"])
    assert in_modules("enc.0.conv", ["head", "enc"])
    assert not in_modules("encoder", ["enc"])
    assert not in_modules("enc", ["enc.0"])
    assert not in_modules("enc", [])


def test_the_root_is_inside_nothing():
    assert not in_modules("", ["", "enc"])
