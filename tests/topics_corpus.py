"""A small corpus of unrelated topics that the index tests share (one document per topic, one in German)."""

from indexer.documents import Document

CORPUS = [
    Document("espresso", "Espresso is brewed by forcing hot water through finely ground coffee.", "Coffee"),
    Document("glacier", "Glaciers are slow rivers of ice that carve valleys into mountains.", "Glaciers"),
    Document("honey", "Honey bees collect nectar from flowers and store honey in the hive.", "Bees"),
    Document("chess", "The knight moves in an L shape and checkmate ends the game.", "Chess"),
    Document("volcano", "Lava erupts from the crater of the volcano and flows down its slopes.", "Volcanoes"),
    Document("bake", "Knead the dough, let the bread rise, then bake it in a hot oven.", "Baking"),
    Document("jazz", "Jazz musicians improvise solos over swing rhythms on saxophone.", "Music"),
    Document("flügel", "Der Flügel des Flugzeugs trägt es durch die Luft.", "Flügel ✈"),
]
