"""QOM: type registration, class and instance ordering, properties, casts, the tree."""

from __future__ import annotations

from typing import Any

import pytest

from pemu.qom.object import (
    Object,
    ObjectClass,
    ObjectProperty,
    QOMCastError,
    QOMError,
    TypeInfo,
    container_get,
    object_check,
    object_class_by_name,
    object_class_check,
    object_class_get_list,
    object_get_root,
    object_new,
    object_resolve_path,
    type_register,
)

log: list[str] = []


class AnimalClass(ObjectClass):
    legs: int = 0
    sound: str = ""


class Animal(Object):
    pass


def _hooks(name: str) -> dict[str, Any]:
    def class_init(k: ObjectClass, data: Any) -> None:
        log.append(f"class_init {name}")

    def class_base_init(k: ObjectClass, data: Any) -> None:
        log.append(f"class_base_init {name} for {k.name}")

    return dict(
        class_init=class_init,
        class_base_init=class_base_init,
        instance_init=lambda o: log.append(f"init {name}"),
        instance_post_init=lambda o: log.append(f"post_init {name}"),
        instance_finalize=lambda o: log.append(f"finalize {name}"),
    )


def animal_class_init(k: ObjectClass, data: Any) -> None:
    log.append("class_init t-animal")
    k.legs = 4  # type: ignore[attr-defined]
    k.sound = "..."  # type: ignore[attr-defined]
    k.property_add_field("name", "str", default="nobody")
    k.property_add_field("weight", "size", default=1024)
    k.property_add_field("tame", "bool", default=False)


def bird_class_init(k: ObjectClass, data: Any) -> None:
    log.append("class_init t-bird")
    k.legs = 2  # type: ignore[attr-defined]


h = _hooks("t-animal")
h["class_init"] = animal_class_init
type_register(TypeInfo("t-animal", abstract=True, instance_type=Animal, class_type=AnimalClass, **h))
h = _hooks("t-bird")
h["class_init"] = bird_class_init
type_register(TypeInfo("t-bird", parent="t-animal", **h))
type_register(TypeInfo("t-parrot", parent="t-bird", interfaces=("t-talker",), **_hooks("t-parrot")))
type_register(TypeInfo("t-talker", parent="interface"))
type_register(TypeInfo("t-dog", parent="t-animal", class_data="woof",
                       class_init=lambda k, d: setattr(k, "sound", d)))


def test_class_init_runs_parent_first_once_and_inherits():
    log.clear()
    parrot = object_class_by_name("t-parrot")
    assert log == [
        "class_init t-animal",
        "class_base_init t-animal for t-bird",
        "class_init t-bird",
        "class_base_init t-bird for t-parrot",
        "class_base_init t-animal for t-parrot",
        "class_init t-parrot",
    ]
    assert parrot.legs == 2 and parrot.sound == "..."
    log.clear()
    assert object_class_by_name("t-parrot") is parrot
    assert log == []


def test_child_class_fields_do_not_leak_to_parent():
    dog = object_class_by_name("t-dog")
    animal = object_class_by_name("t-animal")
    assert dog.sound == "woof" and animal.sound == "..."


def test_instance_init_parent_first_post_init_and_finalize_child_first():
    object_class_by_name("t-parrot")
    log.clear()
    obj = object_new("t-parrot")
    assert log == ["init t-animal", "init t-bird", "init t-parrot",
                   "post_init t-parrot", "post_init t-bird", "post_init t-animal"]
    log.clear()
    obj.unref()
    assert log == ["finalize t-parrot", "finalize t-bird", "finalize t-animal"]


def test_one_class_many_objects():
    a, b = object_new("t-bird"), object_new("t-bird")
    assert a.klass is b.klass and a is not b
    a.property_parse("name", "polly")
    assert b.property_get("name") == "nobody"


def test_abstract_type_cannot_be_instantiated():
    with pytest.raises(QOMError, match="abstract"):
        object_new("t-animal")


def test_property_defaults_parsing_and_inheritance():
    obj = object_new("t-parrot")
    assert obj.property_get("weight") == 1024 and obj.property_get("tame") is False
    obj.property_parse("weight", "4G")
    obj.property_parse("tame", "on")
    assert obj.property_get("weight") == 4 << 30 and obj.property_get("tame") is True
    for text, value in [("yes", True), ("no", False), ("true", True), ("off", False)]:
        obj.property_parse("tame", text)
        assert obj.property_get("tame") is value
    with pytest.raises(QOMError, match="expects 'on' or 'off'"):
        obj.property_parse("tame", "maybe")
    with pytest.raises(QOMError, match="expects a size"):
        obj.property_parse("weight", "heavy")
    with pytest.raises(QOMError, match="Property 't-parrot.nosuch' not found"):
        obj.property_parse("nosuch", "1")


def test_enum_and_int_properties_on_an_instance():
    obj = object_new("t-dog")
    obj.property_add(ObjectProperty("mood", "Mood", get=lambda o: o.mood, set=lambda o, v: setattr(o, "mood", v),
                                    enum_values=("happy", "sad")))
    obj.property_add(ObjectProperty("age", "uint8", get=lambda o: o.age, set=lambda o, v: setattr(o, "age", v)))
    obj.property_parse("mood", "sad")
    obj.property_parse("age", "0x10")
    assert (obj.property_get("mood"), obj.property_get("age")) == ("sad", 16)
    with pytest.raises(QOMError):
        obj.property_parse("mood", "angry")
    with pytest.raises(QOMError):
        obj.property_parse("age", "256")


def test_casts_and_interfaces():
    parrot = object_new("t-parrot")
    assert parrot.cast("t-animal") is parrot
    assert parrot.is_a("t-talker")
    dog = object_new("t-dog")
    assert dog.dynamic_cast("t-bird") is None
    with pytest.raises(QOMCastError, match="is not an instance of type t-bird"):
        dog.cast("t-bird")


def test_object_check_and_object_class_check_see_the_python_class_of_an_ancestor_type():
    dog = object_new("t-dog")  # t-dog declares no Python classes: t-animal's are its
    assert object_check(dog, Animal) is dog
    assert object_class_check(dog.klass, AnimalClass) is dog.klass
    plain = object_new("container")
    with pytest.raises(QOMCastError, match="of type container is not a Animal"):
        object_check(plain, Animal)
    with pytest.raises(QOMCastError, match="Class container is not a AnimalClass"):
        object_class_check(plain.klass, AnimalClass)


def test_object_class_get_list_finds_concrete_subclasses():
    names = {k.name for k in object_class_get_list("t-animal", False)}
    assert names == {"t-bird", "t-parrot", "t-dog"}
    names = {k.name for k in object_class_get_list("t-animal", True)}
    assert "t-animal" in names
    assert {k.name for k in object_class_get_list("t-talker", False)} == {"t-parrot"}


def test_composition_tree_and_paths():
    root = object_get_root()
    zoo = container_get(root, "/t-zoo/aviary")
    bird = object_new("t-bird")
    zoo.add_child("polly", bird)
    bird.unref()
    assert bird.canonical_path() == "/t-zoo/aviary/polly"
    assert object_resolve_path("/t-zoo/aviary/polly") is bird
    assert object_resolve_path("polly") is bird
    assert object_resolve_path("/t-zoo/nothing") is None
    log.clear()
    bird.unparent()
    assert bird.canonical_path() is None
    assert "finalize t-bird" in log  # the tree held the last reference


def test_link_property_resolves_and_checks_type():
    holder = object_new("t-dog")
    holder.friend = None
    holder.property_add(ObjectProperty("friend", "link<t-bird>", get=lambda o: o.friend,
                                       set=lambda o, v: setattr(o, "friend", v)))
    root = object_get_root()
    b = object_new("t-bird")
    root.add_child("t-linked-bird", b)
    holder.property_parse("friend", "/t-linked-bird")
    assert holder.friend is b
    d = object_new("t-dog")
    root.add_child("t-linked-dog", d)
    with pytest.raises(QOMError, match="expected: t-bird"):
        holder.property_parse("friend", "/t-linked-dog")


def test_duplicate_type_and_property_refused():
    with pytest.raises(QOMError):
        type_register(TypeInfo("t-dog"))
    obj = object_new("t-dog")
    with pytest.raises(QOMError, match="duplicate property"):
        obj.property_add(ObjectProperty("name", "str"))
